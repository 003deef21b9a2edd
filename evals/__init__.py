"""Evaluation metrics, results store, tables and plots.

Modules (import what you need; nothing heavy is imported here):
  metric        Metric / MetricResult / PromptImageScore, mean and bootstrap intervals (the interface)
  sample_set    SampleSet: a folder of PNGs plus manifest.jsonl
  weights       local weights resolution (resolve_weights, MissingWeightsError); nothing downloads
  metrics       the registry: metric names and directions, build_metrics, evaluate
  samples       generate_samples (batched, resumable), load_prompts, load_coco_captions
  fid           FID, KID, FID-T, patch FID-T on clean-fid (Inception from a local file, or any extractor)
  clip_score    CLIP score (open_clip)          hps           HPS v2 / v2.1 (open_clip ViT-H-14)
  pickscore     PickScore (transformers CLIP)   image_reward  ImageReward (image-reward 1.5 on transformers 5)
  store         run-folder writers and the idempotent DuckDB sync / query
  tables        ablation tables (Markdown, LaTeX, CSV)   plots   metric curves and sample grids (PNG)
  digits        the digits world's metrics in its classifier's feature space
"""
