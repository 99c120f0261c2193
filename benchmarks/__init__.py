"""Benchmark scripts: what paper scale costs (time, memory, throughput), measured on the machine at hand.

Run each from the repository root as a module, e.g. ``python -m benchmarks.step_time --paper``; results and
how to read them: ``docs/performance.md`` (CPU) and ``docs/gpu.md`` (GPU). Not part of the ``ris`` package:
nothing in ``ris`` imports them.

    step_time           training step time and peak memory of every method x backbone (demo or paper size)
    data_path           the training data path: samples/s per DataLoader worker, workers needed per GPU
    eval_throughput     samples/s of ``ris evaluate``'s loop with a paper-size model
    prepare_benchmark   ``ris prepare`` on a generated REFER set of full RefCOCO size
    paper_memory        peak memory and step time of a paper-size LAVT step, ours vs the official code
    lavt_speed          our paper-size LAVT vs the official code, forward and forward + backward
    paper_forward       CPU inference time of every paper-size method x backbone, beside its parameter counts
    gpu_check           one-command check of the GPU path (training steps, evaluation rate, bf16 accuracy)
    plan_time           how long ``snakemake -n`` takes to plan the paper grid and the demo's
    mask_variants       demo runs of CoupAlign/EAVL/JMCELN training variants over seeds: do N masks differ?
    call_trace          static trace of the calls from training's train(): returns to a file already left
    bench_utils         shared helpers: the machine line, Markdown tables, the paper model's config, official LAVT
"""
