"""The synthetic data pipeline: prompts, generation with a credit ledger, grid extraction,
quality checks and reports (the plan's 6x6 grids of faces, made robust to what models return)."""

from fer_core.synthetic.backends import (
    BACKENDS,
    DiffusersBackend,
    GeneratedImage,
    GenerationError,
    GridBackend,
    HttpBackend,
    ImportBackend,
    create_backend,
    generate_grids,
    register_backend,
)
from fer_core.synthetic.extract import (
    MANIFEST_FILE,
    CellResult,
    ExtractSettings,
    committed_grids,
    extract_faces,
    extract_grid,
)
from fer_core.synthetic.grid import GridLayout, GridSettings, find_layout
from fer_core.synthetic.ledger import CreditBudgetError, CreditLedger
from fer_core.synthetic.prompts import (
    GENDERS,
    INTENSITIES,
    TEMPLATES,
    Prompt,
    PromptSpec,
    build_prompt,
    custom_prompt,
    prompt_matrix,
    register_template,
)
from fer_core.synthetic.quality import FaceQuality, QualityThresholds, hash_distance, measure_face, perceptual_hash
from fer_core.synthetic.report import contact_sheet, summarize, write_report

__all__ = [
    "BACKENDS", "GENDERS", "INTENSITIES", "MANIFEST_FILE", "TEMPLATES", "CellResult", "CreditBudgetError",
    "CreditLedger", "DiffusersBackend", "ExtractSettings", "FaceQuality", "GeneratedImage", "GenerationError",
    "GridBackend", "GridLayout", "GridSettings", "HttpBackend", "ImportBackend", "Prompt", "PromptSpec",
    "QualityThresholds", "build_prompt", "committed_grids", "contact_sheet", "create_backend", "custom_prompt",
    "extract_faces", "extract_grid", "find_layout", "generate_grids", "hash_distance", "measure_face",
    "perceptual_hash", "prompt_matrix", "register_backend", "register_template", "summarize", "write_report",
]
