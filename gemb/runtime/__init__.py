"""Process-level set-up for entry points: the memory allocator and the compilation cache."""
