"""Counts in messages: `plural(1, "worker")` is "1 worker", `plural(2, "worker")` "2 workers". Here, in the
lowest layer, so that the messages of every layer (config, data, training, the cluster, the commands) share it."""


def plural(count: float, noun: str, plural_noun: str | None = None) -> str:
    """The count and the noun, in the plural (`plural_noun`, by default noun + "s") unless the count is 1;
    a float count as "%g": plural(0.5, "CPU") is "0.5 CPUs"."""
    number = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{number} {noun if count == 1 else plural_noun or noun + 's'}"
