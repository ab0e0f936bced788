"""Scores of decoded outputs against references: BLEU and chrF, placeholders kept, ROUGE-L.

BLEU and chrF are sacrebleu's corpus scores with its default settings
(``corpus_bleu(hyps, [refs])``, ``corpus_chrf(hyps, [refs])``), so they can
be compared with any paper or tool that reports sacrebleu's figures. sacrebleu
comes with ``pip install 'genrnn[translate]'``.

Placeholders: program messages carry printf conversions (``%s``, ``%d``,
``%1$s``, ``%.*s``...) that a translation must keep, in any order; an output
keeps them when its multiset of conversions equals the source's (``%%`` is a
literal percent sign and is not counted). The space flag (``% d``) is not
recognised: "100 % erledigt" would read as a conversion ``% e``.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

from .errors import GenrnnError

PLACEHOLDER = re.compile(r"%%|%(?:\d+\$)?[-+#0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|Z|t)?"
                         r"[diouxXeEfFgGaAcspnm]")


def placeholders(text: str) -> List[str]:
    """The printf conversions of a message, sorted (``%%`` left out)."""
    return sorted(m for m in PLACEHOLDER.findall(text) if m != "%%")


def placeholders_kept(outputs: Sequence[str], sources: Sequence[str]) -> float:
    """The share of outputs whose placeholders equal their source's."""
    if not outputs:
        return 0.0
    return sum(placeholders(o) == placeholders(s) for o, s in zip(outputs, sources)) / len(outputs)


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise GenrnnError("BLEU and chrF need sacrebleu: pip install 'genrnn[translate]'") from None
    return sacrebleu


def bleu(outputs: Sequence[str], references: Sequence[str]) -> float:
    return float(_sacrebleu().corpus_bleu(list(outputs), [list(references)]).score)


def chrf(outputs: Sequence[str], references: Sequence[str]) -> float:
    return float(_sacrebleu().corpus_chrf(list(outputs), [list(references)]).score)


def rouge_l(outputs: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (Lin 2004, beta 1) over lower-cased words, in percent."""
    total = 0.0
    for o, r in zip(outputs, references):
        a, b = o.lower().split(), r.lower().split()
        if not a or not b:
            continue
        prev = [0] * (len(b) + 1)
        for x in a:  # longest common subsequence, one row at a time
            cur = [0]
            for j, y in enumerate(b):
                cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
            prev = cur
        lcs = prev[-1]
        if lcs:
            p, q = lcs / len(a), lcs / len(b)
            total += 2 * p * q / (p + q)
    return 100.0 * total / max(1, len(outputs))


def translation_scores(outputs: Sequence[str], references: Sequence[str],
                       sources: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """BLEU, chrF, exact match (%) and, with the sources, the placeholders kept (%)."""
    if len(outputs) != len(references):
        raise GenrnnError(f"{len(outputs)} outputs for {len(references)} references")
    scores = {"bleu": bleu(outputs, references), "chrf": chrf(outputs, references),
              "exact": 100.0 * sum(o == r for o, r in zip(outputs, references)) / max(1, len(outputs))}
    if sources is not None:
        scores["placeholders_kept"] = 100.0 * placeholders_kept(outputs, sources)
    return scores
