"""Word lists that say something else than spam: when a message was gathered, which language it
is in, the register it is written in. Training leaves them out of the vocabulary by default
(milter.training.train.TrainConfig.exclude_words), for the reasons given with each list; a
site's retraining may learn the register words back from its own mail (milter.retrain). Here,
not in training, so that retraining needs no training code."""

from __future__ import annotations

from importlib import resources

# Month and weekday names say when a collection was gathered (all of TREC 2007 is April), not
# whether a message is spam; the abbreviations that are also words (may, mar, sun, sat, wed) stay.
DATE_WORDS: tuple[str, ...] = (
    "january", "february", "march", "april", "june", "july", "august", "september", "october",
    "november", "december", "jan", "feb", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
    "dec", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "mon",
    "tue", "tues", "thu", "thur", "thurs", "fri",
)  # fmt: skip


# The commonest words of German, French, Spanish, Italian, Portuguese and Dutch (none that is
# also an English word): in these corpora every message in those languages is spam (the ham
# lists talk English), so they say which language a message is in, not whether it is spam; fitted,
# "aus", "la", "para" sent a two-line German, French or Spanish note to p >= 0.7.
LANGUAGE_WORDS: tuple[str, ...] = tuple(dict.fromkeys((
    "und", "der", "das", "ist", "nicht", "mit", "sich", "auf", "für", "ein", "eine", "einen", "dem",
    "des", "zu", "von", "wir", "ich", "du", "sie", "es", "aus", "bei", "auch", "noch", "nach",
    "wie", "oder", "aber", "sind", "wird", "werden", "haben", "hat", "ihr", "ihre", "uns", "mich",
    "dich", "mir", "dir", "zum", "zur", "im", "vom", "schon", "sehr",
    "le", "les", "des", "du", "et", "est", "une", "un", "pour", "dans", "sur", "avec", "pas", "qui",
    "que", "vous", "nous", "je", "il", "elle", "ce", "cette", "sont", "au", "aux", "se", "ne", "mais",
    "ou", "très", "votre", "vos", "notre", "nos", "mon", "ma", "mes", "à", "être", "été", "avez",
    "el", "los", "las", "del", "en", "y", "es", "por", "para", "una", "su", "sus", "lo",
    "como", "más", "pero", "este", "esta", "usted", "ustedes", "nuestro", "muy", "yo", "tu",
    "il", "di", "che", "della", "delle", "sono", "gli", "alla", "questo", "questa",
    "nel", "anche", "molto",
    "os", "uma", "não", "seu", "sua", "você", "mais", "muito", "pelo", "pela",
    "het", "een", "niet", "ook", "zijn", "voor", "wij", "jij", "uw", "mijn", "naar", "maar", "la",
    # greetings say the language too
    "hallo", "servus", "bonjour", "salut", "hola", "ciao", "olá", "hoi", "grüße", "gruß", "saludos",
)))  # fmt: skip


def _word_list(name: str) -> tuple[str, ...]:
    text = resources.files("milter").joinpath(f"data/{name}").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


# English function words (milter/data/english-function-words.txt) and "!", in the body and in
# the subject: they say the register, not spam. The corpora's ham is technical list talk, so
# personal register ("you", "we", "our", "!") leans to spam there, and a two-line note is
# little else; "!" is in 74 % of SpamAssassin's spam but in 34 % of modern ham and 15 % of
# modern spam. Left out, held-out spam above the score of the top 10 % of held-out commercial
# ham (shipping notices, wanted newsletters) went from 53 % to 66 %, and no written note scored
# 0.5 (docs/model.md, "What was tried (2026-12-02, second)").
FUNCTION_WORDS: tuple[str, ...] = (*_word_list("english-function-words.txt"), "!")
REGISTER_WORDS: tuple[str, ...] = FUNCTION_WORDS + tuple(f"subj:{word}" for word in FUNCTION_WORDS)
