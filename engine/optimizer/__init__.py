"""The background optimizer of a collection, one module per job over a shared scheduler:

- ``scheduler``: the thread, the loop and the order of the jobs; ``optimize()``.
- ``seal``: the mutable segment's rows become a sealed segment.
- ``compaction``: segments with many dead rows are rewritten, small neighbours merged.
- ``payload_indexes``: payload indexes added later are built over sealed segments.
- ``tenant_graphs``: HNSW partitions of large tenants (promotion, delta, demotion).
- ``build``: the segment build every job that writes a segment uses.
"""
