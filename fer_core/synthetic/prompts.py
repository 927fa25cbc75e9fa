"""Text-to-image prompts for grids of faces, built from fields by versioned templates.

The thesis plan's prompt-engineering notes are encoded here: naming the emotion early raises its
intensity; "movie photo" / "headshot movie portraits" make faces more expressive; "realistic"
makes them cartoonish (never used); the grid must be spelled out ("6x6 dimension grid ... six
images for height and six images for width") or models draw 3x3 or 5x5 grids; diversity of
ethnicity, hair, age range and skin tone; a well-lit, grey, uniform background.

``build_prompt(PromptSpec("Neutral", "women"), "plan-best")`` reproduces the plan's best prompt
word for word (typos included); ``"current"`` is the cleaned-up template.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from numbers import Integral

from fer_core.errors import InvalidArgument
from fer_core.labels import EMOTIONS
from fer_core.validation import Interval, StrOptions, validate_params

#: Genders a prompt can ask for ("mixed": women and men in one grid); None leaves it unstated.
GENDERS = ("women", "men", "mixed")
#: What the command line and import manifests write for an unstated gender.
UNSPECIFIED = "unspecified"
#: The genders :func:`prompt_matrix` covers by default (the plan's grids: one gender per grid).
DEFAULT_GENDERS = ("women", "men")
INTENSITIES = ("slight", "moderate", "extreme")

#: How each emotion is written into a prompt ("show {word} emotional expressions").
EMOTION_WORDS = {
    "Anger": "angry", "Contempt": "contemptuous", "Disgust": "disgusted", "Fear": "fear",
    "Happiness": "happy", "Neutral": "neutral", "Sadness": "sad", "Surprise": "surprised",
}
#: The intensity adverb the cleaned template puts before the emotion ("extremely angry").
INTENSITY_ADVERBS = {"slight": "slightly", "moderate": "moderately", "extreme": "extremely"}


@validate_params({"emotion": [StrOptions(EMOTIONS)], "gender": [StrOptions(GENDERS), None],
                  "intensity": [StrOptions(INTENSITIES), None], "age_range": [str, None],
                  "layout": [Interval(Integral, 2, 10)]})
@dataclass(frozen=True)
class PromptSpec:
    """What a grid should show.

    Args:
        emotion: one of :data:`fer_core.labels.EMOTIONS`.
        gender: ``"women"``, ``"men"``, ``"mixed"`` (both in one grid) or None (unstated: the
            prompt names no gender).
        intensity: ``"slight"``, ``"moderate"``, ``"extreme"`` or None (unstated).
        age_range: e.g. ``"20-35"``; None asks for diverse age ranges.
        layout: faces per row and column asked for.
    """

    emotion: str
    gender: str | None = "women"
    intensity: str | None = None
    age_range: str | None = None
    layout: int = 6

    def __post_init__(self) -> None:
        if self.age_range is not None and not self.age_range.strip():
            raise InvalidArgument(f"age_range: expected text such as '20-35' or None, got {self.age_range!r}")
        object.__setattr__(self, "layout", int(self.layout))  # a numpy integer would not go into the JSON ledger


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: its text, the spec and template it came from, and a stable id
    (a hash of the template version and the text)."""

    text: str
    spec: PromptSpec
    template: str
    version: str

    @property
    def id(self) -> str:
        return hashlib.sha256(f"{self.version}\n{self.text}".encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return {"prompt": self.text, "prompt_id": self.id, "template": self.template,
                "template_version": self.version, **asdict(self.spec)}


Renderer = Callable[[PromptSpec], str]
#: Template name -> (version string, renderer); filled by :func:`register_template`.
TEMPLATES: dict[str, tuple[str, Renderer]] = {}


def register_template(name: str, version: str) -> Callable[[Renderer], Renderer]:
    """Decorator: make a renderer available to :func:`build_prompt` as ``name``.
    Change ``version`` whenever the rendered words change (it is part of the prompt id)."""
    def register(render: Renderer) -> Renderer:
        TEMPLATES[name] = (f"{name}@{version}", render)
        return render
    return register


def _expression(spec: PromptSpec) -> str:
    word = EMOTION_WORDS[spec.emotion]
    return word if spec.intensity is None else f"{spec.intensity} {word}"


def parse_gender(text: str | None) -> str | None:
    """A gender field as typed (any case; blank or ``"unspecified"``: None); an :class:`InvalidArgument` otherwise."""
    value = (text or "").strip().lower()
    if value in ("", UNSPECIFIED):
        return None
    if value not in GENDERS:
        raise InvalidArgument(f"gender: expected one of {[*GENDERS, UNSPECIFIED]}, got {text!r}")
    return value


def _plan_people(spec: PromptSpec) -> str:
    """The plan's "a distinct women individuals", with "women and men" for a mixed grid and no word when unstated."""
    words = {"mixed": "women and men", None: ""}.get(spec.gender, spec.gender)
    return f"a distinct {words} individuals".replace("  ", " ")


def _plan_diversity(spec: PromptSpec) -> str:
    ages = "age ranges" if spec.age_range is None else f"ages {spec.age_range}"
    return f"diverse ethnicities, hair, {ages} and skin tones"


@register_template("plan-best", "1")
def _plan_best(spec: PromptSpec) -> str:
    """The plan's final "Best" prompt, word for word."""
    n = spec.layout
    return (f"A photo grid of a {n}x{n} dimension headshot movie portaits, each image cell containing "
            f"{_plan_people(spec)} with {_plan_diversity(spec)}. Faces are front-facing and show "
            f"{_expression(spec)} emotional expressions and well light environment. It is important that the "
            f"layout must be equally spaced, and each face should be full shown and clearly separated from the others.")


@register_template("plan-professional", "1")
def _plan_professional(spec: PromptSpec) -> str:
    """The plan's "best" professional-headshot prompt (used with "extreme angry" / "extreme sad")."""
    n = spec.layout
    return (f"A grid of a {n}x{n} dimension professional headshot movie portaits, each image cell containing "
            f"{_plan_people(spec)} with {_plan_diversity(spec)}. Faces are front-facing and show "
            f"{_expression(spec)} emotional expressions and well light environment. The layout must be equally "
            f"spaced, and each face should be full shown and clearly separated from the others.")


_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}


@register_template("current", "2")
def _current(spec: PromptSpec) -> str:
    """The cleaned-up template: emotion first, the grid spelled out, no "realistic"."""
    n, words = spec.layout, _NUMBER_WORDS[spec.layout]
    word = EMOTION_WORDS[spec.emotion]
    if spec.emotion == "Fear":
        word = "fearful"
    emotion = word if spec.intensity is None else f"{INTENSITY_ADVERBS[spec.intensity]} {word}"
    people = {"women": "woman", "men": "man", "mixed": "woman or man", None: "person"}[spec.gender]
    ages = "of diverse age ranges" if spec.age_range is None else f"aged {spec.age_range}"
    mix = "a balanced mix of women and men, " if spec.gender == "mixed" else ""
    return (f"{emotion.capitalize()} facial expressions: a movie photo of a {n}x{n} dimension grid of headshot "
            f"movie portraits, so {words} images for height and {words} images for width, {n * n} cells in all. "
            f"Each cell shows one distinct {people} {ages}, with {mix}diverse ethnicities, hair and skin tones, "
            f"front-facing, showing {_article(emotion)} {emotion} emotional expression, in a well-lit environment "
            f"with a uniform "
            f"grey background. The layout must be equally spaced, and each face should be fully shown and "
            f"clearly separated from the others.")


def _article(word: str) -> str:
    """``an`` before a vowel (an extremely angry...), else ``a``."""
    return "an" if word[:1].lower() in "aeiou" else "a"


@validate_params({"template": [StrOptions(TEMPLATES)]})
def build_prompt(spec: PromptSpec, template: str = "current") -> Prompt:
    """The prompt ``template`` renders for ``spec`` (deterministic: same inputs, same text and id)."""
    version, render = TEMPLATES[template]
    return Prompt(render(spec), spec, template, version)


def prompt_matrix(emotions: tuple[str, ...] = EMOTIONS, genders: tuple[str | None, ...] = DEFAULT_GENDERS,
                  intensities: tuple[str | None, ...] = (None,), template: str = "current",
                  age_range: str | None = None, layout: int = 6) -> list[Prompt]:
    """One prompt per (emotion, gender, intensity), in that nesting order."""
    return [build_prompt(PromptSpec(e, g, i, age_range, layout), template)
            for e in emotions for g in genders for i in intensities]


def custom_prompt(text: str, spec: PromptSpec) -> Prompt:
    """A prompt written by hand (e.g. the one typed into a web UI for an imported grid)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument("prompt text: expected a non-empty string")
    return Prompt(text.strip(), spec, "custom", "custom")
