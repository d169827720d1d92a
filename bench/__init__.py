"""segfuse.bench"""
