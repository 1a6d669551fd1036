"""The polca.dev/v1alpha1 API: pydantic models that are the source of truth for the CRDs.

`powerpolicy` and `nodepowerstate` hold the two kinds; `tiers`, `stages`, `meta` and
`conditions` their parts; `defaults` POLCA's policy; `crdgen` renders the CRDs (`make crds`);
`convert` turns a spec into the pure control plan; `semantic` checks what the schema cannot.
"""
