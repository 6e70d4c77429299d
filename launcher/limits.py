"""The limits SageMaker enforces on a CreateTrainingJob request, checked offline.

botocore's own validation (``ParamValidator``) checks types and required keys but not the
lengths, ranges and patterns its service model declares; SageMaker rejects a request that
breaks them, after the launcher has already uploaded the config. This module walks the
request along the model's input shape and checks them all, so a bad value fails before any
upload, with one line naming the request key and the flag it came from.

Where the rule lives: SageMaker API reference, "CreateTrainingJob" (TrainingJobName pattern,
HyperParameters: at most 100, keys ≤ 256 and values ≤ 2,500 characters; Tags: at most 50)
and "Tag" (keys ≤ 128, values ≤ 256 characters, pattern ``([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)``);
botocore carries the same numbers in its service model, which is what is read here.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from .errors import InvalidRequest

# Which user input a request key comes from, for the one-line error (longest prefix wins).
FLAG_HINTS = {
    "TrainingJobName": "--job-name",
    "HyperParameters['data_url']": "--data-prefix",
    "HyperParameters['config_file']": "--config (its file name)",
    "Tags[b2t:config]": "--config (its file name is tagged)",
    "ResourceConfig.VolumeSizeInGB": "--volume-gb",
    "ResourceConfig.InstanceType": "--instance-type",
    "StoppingCondition.MaxRuntimeInSeconds": "--max-run",
    "StoppingCondition.MaxWaitTimeInSeconds": "--max-wait",
}


def check_limits(request: dict[str, Any], shape: Any) -> None:
    """Raise :class:`InvalidRequest` on the first value outside the model's limits."""
    for path, problem in _problems(request, shape, ""):
        raise InvalidRequest(f"{path}: {problem}{_hint(path)}")


def _hint(path: str) -> str:
    matches = [prefix for prefix in FLAG_HINTS if path.startswith(prefix)]
    return f" (from {FLAG_HINTS[max(matches, key=len)]})" if matches else ""


def _problems(value: Any, shape: Any, path: str) -> Iterator[tuple[str, str]]:
    yield from ((path, problem) for _, problem in _own_problems(value, shape))
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, member in shape.members.items():
            if key in value:
                yield from _problems(value[key], member, f"{path}.{key}" if path else key)
    elif shape.type_name == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            label = item["Key"] if isinstance(item, dict) and isinstance(item.get("Key"), str) else i
            yield from _problems(item, shape.member, f"{path}[{label}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            yield from ((f"{path}[{key!r}]", f"key: {m}") for _, m in _own_problems(key, shape.key))
            yield from _problems(item, shape.value, f"{path}[{key!r}]")


def _own_problems(value: Any, shape: Any) -> Iterator[tuple[str, str]]:
    meta = shape.metadata
    low, high = meta.get("min"), meta.get("max")
    if shape.type_name in ("integer", "long") and isinstance(value, int):
        if low is not None and value < low:
            yield "", f"{value} is below SageMaker's minimum of {low}"
        if high is not None and value > high:
            yield "", f"{value} is above SageMaker's maximum of {high}"
        return
    if shape.type_name in ("string", "list", "map") and isinstance(value, (str, list, dict)):
        unit = "characters" if isinstance(value, str) else "entries"
        if high is not None and len(value) > high:
            yield "", f"{len(value):,} {unit}, more than SageMaker's {high:,}"
        if low is not None and len(value) < low:
            yield "", f"{len(value):,} {unit}, fewer than SageMaker's {low:,}"
    pattern = meta.get("pattern")
    if shape.type_name == "string" and isinstance(value, str) and pattern and not _matcher(pattern)(value):
        yield "", f"{_short(value)} does not match SageMaker's pattern {pattern}"


def _short(value: str, limit: int = 60) -> str:
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"… ({len(value):,} characters)"


# The model's patterns are Java regexes applied to the whole value; Python's `re` lacks the
# Unicode categories (\p{L}) the tag patterns use, so those are checked character by character.
_CATEGORY_CLASS = re.compile(r"\(?\[((?:\\p\{[A-Z]\}|\\.|[^\]\\])*)\]\*\)?")


@lru_cache(maxsize=None)
def _matcher(pattern: str) -> Callable[[str], bool]:
    if "\\p{" not in pattern:
        compiled = re.compile(pattern)
        return lambda value: compiled.fullmatch(value) is not None
    whole = _CATEGORY_CLASS.fullmatch(pattern)
    if whole is None:
        raise ValueError(f"unsupported pattern in botocore's model: {pattern}")
    items = re.findall(r"\\p\{([A-Z])\}|\\(.)|([^\\])", whole.group(1))
    categories = {cat for cat, _, _ in items if cat}
    literals = {esc or ch for cat, esc, ch in items if not cat}
    return lambda value: all(c in literals or unicodedata.category(c)[0] in categories for c in value)
