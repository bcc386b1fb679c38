"""Implementations of the local relation layer's relation step.

Every implementation of `LocalRelation2d` shares the layer's parameters and its 1x1
convolutions (key, query, final) and geometry prior; they differ only in the step between:
the appearance logits Phi(q, k) + prior over each k x k window, the softmax over the
positions inside the image, and the aggregation of each group's m channels. Each
implementation here is a `Relation`:

    y = relation(layer, x, query, key, prior)   # x (B,C,H,W), query (B,G,H',W'),
                                                # key (B,G,H,W), prior (G,k*k) -> (B,C,H',W')

with the bytes it moves by design (`traffic`), where it can run (`unavailable`), how its
backward works, and an optional one-time `prepare` (a compile, a build) timed apart from
the latency. Modules: `unfold` (the readable reference), `shift`, `compiled`, `fused_cpu`
(C++/OpenMP), `triton_gpu` (Triton, CUDA or its interpreter).
"""
