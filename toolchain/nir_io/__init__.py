"""NIR (Neuromorphic Intermediate Representation) in and out: `export_nir` writes an artifact's
binary integrate-and-fire form (toolchain.nir_io.export), `compile_nir` compiles a NIR graph
written by snnTorch, Norse or sinabs into an artifact (toolchain.nir_io.importer).
docs/nir.md describes both mappings and what each costs."""
