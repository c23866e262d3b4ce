"""One mutant of the catalogue: an exact snippet of a source file and its replacement."""


def m(id, file, original, replacement, tests, description):
    return {
        "id": id,
        "file": file,
        "original": original,
        "replacement": replacement,
        "tests": tests,
        "description": description,
    }


def ms(id, file, original, replacement, tests, description, select):
    """A mutant with its own ``-k`` selection (None: the whole test files)."""
    entry = m(id, file, original, replacement, tests, description)
    if select:
        entry["select"] = select
    return entry
