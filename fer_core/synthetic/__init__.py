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
    GridExtraction,
    accepted_per_grid,
    committed_grids,
    extract_faces,
    extract_grid,
)
from fer_core.synthetic.grid import GridLayout, GridSettings, find_layout
from fer_core.synthetic.imports import ImportItem, import_grids, read_import_manifest, revert_imports
from fer_core.synthetic.ledger import CreditBudgetError, CreditLedger
from fer_core.synthetic.prompts import (
    DEFAULT_GENDERS,
    GENDERS,
    INTENSITIES,
    TEMPLATES,
    Prompt,
    PromptSpec,
    build_prompt,
    custom_prompt,
    parse_gender,
    prompt_matrix,
    register_template,
)
from fer_core.synthetic.quality import FaceQuality, QualityThresholds, hash_distance, measure_face, perceptual_hash
from fer_core.synthetic.report import contact_sheet, summarize, write_report

__all__ = [
    "BACKENDS", "DEFAULT_GENDERS", "GENDERS", "INTENSITIES", "MANIFEST_FILE", "TEMPLATES", "CellResult",
    "CreditBudgetError", "CreditLedger", "DiffusersBackend", "ExtractSettings", "FaceQuality", "GeneratedImage",
    "GenerationError", "GridBackend", "GridExtraction", "GridLayout", "GridSettings", "HttpBackend", "ImportBackend",
    "ImportItem", "Prompt", "PromptSpec", "QualityThresholds", "accepted_per_grid", "build_prompt",
    "committed_grids", "contact_sheet", "create_backend", "custom_prompt", "extract_faces", "extract_grid",
    "find_layout", "generate_grids", "hash_distance", "import_grids", "measure_face", "parse_gender",
    "perceptual_hash", "prompt_matrix", "read_import_manifest", "register_backend", "register_template",
    "revert_imports", "summarize", "write_report",
]
