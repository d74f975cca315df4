"""Characters of a protein record that are not standard amino-acid letters, and their fate.

Standard: the 25 letters of fair-esm's ESM-1b alphabet (the 20 amino acids, X, B, U, Z, O), in
either case; line breaks and whitespace at either end of a line; trailing `*` stops. Anything
else in a record body is counted, per sequence, and becomes, on reading:

- whitespace inside a line and digits: dropped. fair-esm's tokenizer drops whitespace too;
  digits are never residues, and where they occur (position numbers of GenBank/EMBL-style
  sequence blocks, `1 mktayiakqr qisfvkshfs 21 ...`) dropping them gives the real protein,
  while an `<unk>` per digit would insert residues that are not there.
- `.` and `-` (alignment gaps): kept; they are tokens of fair-esm's alphabet.
- `J`, a `*` inside the sequence and every other byte: one `<unk>` each, so the positions of
  the residues around them stay right (fair-esm's `Alphabet.get_idx` gives `<unk>` too; its
  batch converter raises instead). A non-ASCII character is one `<unk>` per UTF-8 byte.

Standard input is untouched, so its tokens, and its embedding, equal fair-esm's.
"""

from collections import Counter
from dataclasses import dataclass

from virnucpro.data.tokenizer import RESIDUE_CHARACTERS

DROPPED = "dropped"
KEPT = "kept"
UNKNOWN = "<unk>"

STANDARD_LETTERS = RESIDUE_CHARACTERS.translate(None, b".-")
_LINE_BREAKS = b"\r\n"
_STANDARD_BYTES = STANDARD_LETTERS + STANDARD_LETTERS.lower() + _LINE_BREAKS
DROPPED_BYTES = b" \t\v\f0123456789"
"""Dropped on reading: whitespace (counted inside a line only) and digits."""
_LAYOUT = b" \t\r\v\f"


def fate(byte: int) -> str:
    """What a non-standard byte becomes: `dropped`, `kept` (own token) or `<unk>`."""
    if byte in DROPPED_BYTES:
        return DROPPED
    if byte in b".-":
        return KEPT
    return UNKNOWN


def nonstandard_bytes(body: bytes) -> bytes:
    """The non-standard bytes of a raw record body, in order; whitespace at either end of a
    line (layout, like the line break) and trailing `*` stops excluded."""
    odd = body.translate(None, _STANDARD_BYTES)
    if not odd:
        return odd
    body = b"\n".join(line.strip(_LAYOUT) for line in body.split(b"\n"))
    odd = body.translate(None, _STANDARD_BYTES)
    if b"*" not in odd:
        return odd
    head = body.rstrip(DROPPED_BYTES + _LINE_BREAKS + b"*")
    tail = body[len(head) :]
    return head.translate(None, _STANDARD_BYTES) + tail.translate(None, _STANDARD_BYTES + b"*")


def describe(byte: int) -> str:
    """A byte as a reader sees it: `'J'`, `' '`, `'\\t'`, `'\\xc3'`."""
    return repr(chr(byte)) if byte < 128 else f"'\\x{byte:02x}'"


@dataclass(frozen=True)
class NonstandardSummary:
    """What the index saw: sequences holding non-standard characters, which, how many, and
    what they became."""

    sequences: int
    first_ids: list[str]
    characters: dict[str, tuple[int, str]]
    """Character (as `describe` shows it) -> (count, fate), most frequent first."""

    def line(self) -> str:
        """One line for a run's summary; empty when there is nothing to say."""
        if not self.sequences:
            return ""
        listed = ", ".join(self.first_ids)
        more = ", ..." if self.sequences > len(self.first_ids) else ""
        seen = ", ".join(
            f"{name} x{count} {fate_}" for name, (count, fate_) in self.characters.items()
        )
        return f"{self.sequences} sequences held non-standard characters ({listed}{more}): {seen}"


def summarize(counts: Counter[int], sequences: int, first_ids: list[str]) -> NonstandardSummary:
    """The summary of byte counts gathered over the sequences that held any."""
    characters = {
        describe(byte): (count, fate(byte))
        for byte, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    }
    return NonstandardSummary(sequences, first_ids, characters)


def strict_message(path: object, number: int, name: str, odd: bytes) -> str:
    """The one-line refusal of `build_index(strict=True)`."""
    seen = ", ".join(describe(byte) for byte in sorted(set(odd)))
    return (
        f"{path}: record #{number} '{name}' holds non-standard characters {seen} "
        f"({len(odd)} in all); fix the sequence or run without strict"
    )
