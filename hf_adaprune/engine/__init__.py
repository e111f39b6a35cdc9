"""The pruning engine: scores (``importance``) -> masks (``masks``, ``selection``) -> the adaptive ratio (``controller``)."""
