"""Dataset preparation (``genforge-trainer prepare``): sources, image processing, privacy,
licences, deduplication and the prepared dataset's layout. Never imports torch."""
