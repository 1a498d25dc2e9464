"""ToyWorld text renderers: captions in four languages, questions with answers, and code.

Captions are templated and parallel across languages: the paraphrase choices (object order,
object template, scene wrapper) are drawn from the rng before the language is used, so the
same rng state gives the same caption in every language (bitext is a translation). Adjectives
agree with the noun's gender (German, French, Spanish). Every caption names each attribute
that its aspect shows (see scenes.ASPECTS) for every object, so a caption describes
its rendering completely.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gemb.datasets.toyworld.scenes import ASPECTS, GRID, MOTIONS, SHAPES, Obj, Scene

LANGUAGES = ("en", "de", "fr", "es")

# Per language: shape nouns with gender; colour and size adjectives as base forms (en, de)
# or (masculine, feminine) forms (fr, es); position and motion phrases in caption form.
LEXICON = {
    "en": dict(
        shape=[("square", "-"), ("circle", "-"), ("triangle", "-"), ("cross", "-"),
               ("diamond", "-")],
        colour=["red", "orange", "yellow", "green", "cyan", "blue", "purple", "white"],
        size=["small", "medium", "large"],
        position=["in the top left", "at the top", "in the top right", "on the left",
                  "in the centre", "on the right", "in the bottom left", "at the bottom",
                  "in the bottom right"],
        motion=["standing still", "moving up", "moving down", "moving left", "moving right"],
        object=("object", "-"), order=("size", "colour", "shape"), motion_sep=" ", pos_sep=", ",
        conj="and", count=["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
        count_answer=["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
        count_noun=("shape", "shapes"),
        medium={"image": "picture", "video": "video", "audio": "sound", "full": "scene"},
        there={"image": ("there is", "there are"), "video": ("there is", "there are"),
               "audio": ("you hear", "you hear"), "full": ("there is", "there are")},
        questions=dict(colour="what colour is {ref}?", shape="what shape is {ref}?",
                       size="how big is {ref}?", position="where is {ref}?",
                       count="how many shapes are there?"),
    ),
    "de": dict(
        shape=[("Quadrat", "n"), ("Kreis", "m"), ("Dreieck", "n"), ("Kreuz", "n"), ("Raute", "f")],
        colour=["rot", "orange", "gelb", "grün", "türkis", "blau", "lila", "weiß"],
        size=["klein", "mittelgroß", "groß"],
        position=["oben links", "oben", "oben rechts", "links", "in der Mitte", "rechts",
                  "unten links", "unten", "unten rechts"],
        motion=["ruhend", "nach oben ziehend", "nach unten ziehend", "nach links ziehend",
                "nach rechts ziehend"],
        object=("Objekt", "n"), order=("size", "colour", "shape"), motion_sep=", ", pos_sep=" ",
        conj="und",
        count=["eine", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"],
        count_answer=["eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"],
        count_noun=("Form", "Formen"),
        medium={"image": "Bild", "video": "Video", "audio": "Klang", "full": "Szene"},
        there={"image": ("zu sehen ist", "zu sehen sind"),
               "video": ("zu sehen ist", "zu sehen sind"),
               "audio": ("zu hören ist", "zu hören sind"), "full": ("da ist", "da sind")},
        questions=dict(colour="welche Farbe hat {ref}?", shape="welche Form hat {ref}?",
                       size="wie groß ist {ref}?", position="wo ist {ref}?",
                       count="wie viele Formen gibt es?"),
    ),
    "fr": dict(
        shape=[("carré", "m"), ("cercle", "m"), ("triangle", "m"), ("croix", "f"),
               ("losange", "m")],
        colour=[("rouge", "rouge"), ("orange", "orange"), ("jaune", "jaune"), ("vert", "verte"),
                ("cyan", "cyan"), ("bleu", "bleue"), ("violet", "violette"), ("blanc", "blanche")],
        size=[("petit", "petite"), ("moyen", "moyenne"), ("grand", "grande")],
        position=["en haut à gauche", "en haut", "en haut à droite", "à gauche", "au centre",
                  "à droite", "en bas à gauche", "en bas", "en bas à droite"],
        motion=["immobile", "qui monte", "qui descend", "qui va à gauche", "qui va à droite"],
        object=("objet", "m"), order=("size", "shape", "colour"), motion_sep=" ", pos_sep=", ",
        conj="et", count=["une", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
        count_answer=["un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
        count_noun=("forme", "formes"),
        medium={"image": "image", "video": "vidéo", "audio": "son", "full": "scène"},
        there={"image": ("on voit", "on voit"), "video": ("on voit", "on voit"),
               "audio": ("on entend", "on entend"), "full": ("il y a", "il y a")},
        questions=dict(colour="de quelle couleur est {ref} ?",
                       shape="quelle est la forme de {ref} ?",
                       size="quelle est la taille de {ref} ?", position="où est {ref} ?",
                       count="combien de formes y a-t-il ?"),
    ),
    "es": dict(
        shape=[("cuadrado", "m"), ("círculo", "m"), ("triángulo", "m"), ("cruz", "f"),
               ("rombo", "m")],
        colour=[("rojo", "roja"), ("naranja", "naranja"), ("amarillo", "amarilla"),
                ("verde", "verde"),
                ("cian", "cian"), ("azul", "azul"), ("morado", "morada"), ("blanco", "blanca")],
        size=[("pequeño", "pequeña"), ("mediano", "mediana"), ("grande", "grande")],
        position=["arriba a la izquierda", "arriba", "arriba a la derecha", "a la izquierda",
                  "en el centro", "a la derecha", "abajo a la izquierda", "abajo",
                  "abajo a la derecha"],
        motion=["inmóvil", "que sube", "que baja", "que va a la izquierda", "que va a la derecha"],
        object=("objeto", "m"), order=("shape", "colour", "size"), motion_sep=" ", pos_sep=", ",
        conj="y", count=["una", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"],
        count_answer=["uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"],
        count_noun=("forma", "formas"),
        medium={"image": "imagen", "video": "vídeo", "audio": "sonido", "full": "escena"},
        there={"image": ("se ve", "se ven"), "video": ("se ve", "se ven"),
               "audio": ("se oye", "se oyen"), "full": ("hay", "hay")},
        questions=dict(colour="¿de qué color es {ref}?", shape="¿qué forma tiene {ref}?",
                       size="¿qué tamaño tiene {ref}?", position="¿dónde está {ref}?",
                       count="¿cuántas formas hay?"),
    ),
}
assert set(LEXICON) == set(LANGUAGES)
assert all(len(LEXICON[l]["motion"]) == len(MOTIONS) and len(LEXICON[l]["shape"]) == len(SHAPES)
           for l in LANGUAGES)

N_OBJECT_TEMPLATES = 3  # see _object_phrase
N_SCENE_TEMPLATES = 4   # see _wrap
_INDEFINITE = {"de": {"m": "ein", "f": "eine", "n": "ein"}, "fr": {"m": "un", "f": "une"},
               "es": {"m": "un", "f": "una"}}
_DEFINITE = {"en": {"-": "the"}, "de": {"m": "der", "f": "die", "n": "das"},
             "fr": {"m": "le", "f": "la"}, "es": {"m": "el", "f": "la"}}
_DE_STRONG = {"m": "er", "f": "e", "n": "es"}  # adjective endings after ein/eine (nominative)
_DE_INDECLINABLE = {"lila"}


def _check_lang(lang: str):
  if lang not in LEXICON:
    raise ValueError(f"unknown language {lang!r}; known: {LANGUAGES}")


def _de_inflect(stem: str, ending: str) -> str:
  if stem in _DE_INDECLINABLE:
    return stem
  return stem + (ending[1:] if stem.endswith("e") else ending)


def adjective(lang: str, attribute: str, value: int, gender: str, form: str = "base") -> str:
  """A colour or size word agreeing with a noun of `gender`. form: "strong" (after an indefinite
  article), "weak" (after a definite article), "base" (predicative: German uninflected,
  French/Spanish agree), "answer" (citation form: masculine, uninflected)."""
  word = LEXICON[lang][attribute][value]
  if lang in ("fr", "es"):
    return word[1] if gender == "f" and form != "answer" else word[0]
  if lang == "de" and form == "strong":
    return _de_inflect(word, _DE_STRONG[gender])
  if lang == "de" and form == "weak":
    return _de_inflect(word, "e")
  return word


def answer_word(lang: str, attribute: str, value: int) -> str:
  """The short answer naming `value` of `attribute` (count: value is the number of objects)."""
  lex = LEXICON[lang]
  if attribute == "shape":
    return lex["shape"][value][0]
  if attribute in ("colour", "size"):
    return adjective(lang, attribute, value, "m", "answer")
  if attribute == "count":
    return lex["count_answer"][value - 1]
  return lex[attribute][value]


def _with_article(lang: str, words: list[str], gender: str) -> str:
  if lang == "en":
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)
  return _INDEFINITE[lang][gender] + " " + " ".join(words)


def _noun_phrase(lang: str, obj: Obj, with_size: bool) -> str:
  """Indefinite nominative noun phrase: 'a small red circle', 'un petit cercle rouge'."""
  lex = LEXICON[lang]
  noun, gender = lex["shape"][obj.shape]
  words = {"shape": noun,
           "colour": adjective(lang, "colour", obj.colour, gender, "strong"),
           "size": adjective(lang, "size", obj.size, gender, "strong")}
  order = lex["order"]
  if lang == "fr" and obj.size == 1:  # "moyen" follows the noun, "petit" and "grand" precede it
    order = ("shape", "colour", "size")
  order = [a for a in order if with_size or a != "size"]
  return _with_article(lang, [words[a] for a in order], gender)


def _object_phrase(lang: str, obj: Obj, aspect: str, template: int) -> str:
  """One object in one of N_OBJECT_TEMPLATES parallel forms, naming the aspect's attributes."""
  lex = LEXICON[lang]
  shows = ASPECTS[aspect]
  pos = lex["position"][obj.position] if "position" in shows else None
  if template == 2:
    gender = lex["shape"][obj.shape][1]
    parts = [_noun_phrase(lang, obj, with_size=False), adjective(lang, "size", obj.size, gender)]
    text = ", ".join(parts + ([pos] if pos else []))
  elif template == 1 and pos:
    text = pos + lex["pos_sep"] + _noun_phrase(lang, obj, with_size=True)
  else:
    text = " ".join([_noun_phrase(lang, obj, with_size=True)] + ([pos] if pos else []))
  if "motion" in shows:
    sep = ", " if template == 2 else lex["motion_sep"]
    text += sep + lex["motion"][obj.motion]
  return text


def _join(lang: str, phrases: list[str]) -> str:
  if len(phrases) == 1:
    return phrases[0]
  return ", ".join(phrases[:-1]) + f" {LEXICON[lang]['conj']} " + phrases[-1]


def _wrap(lang: str, objects: str, n: int, aspect: str, template: int) -> str:
  """The scene around the object list, one of N_SCENE_TEMPLATES parallel forms."""
  lex = LEXICON[lang]
  if template == 1:
    return f"{lex['medium'][aspect]}: {objects}"
  if template == 2:
    return f"{lex['there'][aspect][n > 1]} {objects}"
  if template == 3:
    return f"{lex['count'][n - 1]} {lex['count_noun'][n > 1]}: {objects}"
  return objects


class CaptionChoices(NamedTuple):
  """The language-independent paraphrase choices of one caption."""
  order: tuple[int, ...]  # order in which objects are mentioned
  object_template: int
  scene_template: int


def caption_choices(scene: Scene, rng: np.random.Generator) -> CaptionChoices:
  # Templates first: scenes of different counts drawn from the same rng state share them.
  object_template = int(rng.integers(N_OBJECT_TEMPLATES))
  scene_template = int(rng.integers(N_SCENE_TEMPLATES))
  order = tuple(int(i) for i in rng.permutation(len(scene)))
  if scene_template == 2 and object_template == 1:  # "there is in the top left, a ..." reads badly
    object_template = 0
  return CaptionChoices(order, object_template, scene_template)


def caption_from_choices(scene: Scene, choices: CaptionChoices, lang: str = "en",
                         aspect: str = "image") -> str:
  _check_lang(lang)
  if aspect not in ASPECTS:
    raise ValueError(f"unknown aspect {aspect!r}; known: {tuple(ASPECTS)}")
  objects = _join(lang, [_object_phrase(lang, scene[i], aspect, choices.object_template)
                         for i in choices.order])
  return _wrap(lang, objects, len(scene), aspect, choices.scene_template)


def render_caption(scene: Scene, rng: np.random.Generator, lang: str = "en",
                   aspect: str = "image") -> str:
  """A paraphrased caption naming every attribute `aspect` shows, for every object."""
  return caption_from_choices(scene, caption_choices(scene, rng), lang, aspect)


class Question(NamedTuple):
  question: str
  answer: str
  wrong_answer: str       # the same kind of answer with another value: the hard negative
  attribute: str          # what is asked: shape, colour, size, position or count
  value: int              # the true value (count: number of objects)
  wrong_value: int
  object_index: int       # the object asked about (-1 for count)


def _referent(lang: str, obj: Obj, by: str) -> str:
  """Definite noun phrase picking out `obj` by a unique shape, colour or position."""
  lex = LEXICON[lang]
  noun, gender = lex["shape"][obj.shape] if by == "shape" else lex["object"]
  article = _DEFINITE[lang][gender]
  if lang == "fr" and noun[0] in "aeiouéo":
    head = "l'" + noun
  else:
    head = f"{article} {noun}"
  if by == "colour":
    word = adjective(lang, "colour", obj.colour, gender, "weak")
    if lang in ("en", "de"):
      return f"{article} {word} {noun}"
    return f"{head} {word}"
  if by == "position":
    return f"{head} {lex['position'][obj.position]}"
  return head


def render_question(scene: Scene, rng: np.random.Generator, lang: str = "en",
                    max_objects: int = 2) -> Question:
  """A question about the scene's picture, its short answer and a wrong answer."""
  _check_lang(lang)
  lex = LEXICON[lang]
  asks = ["shape", "colour", "size", "position"] + (["count"] if max_objects > 1 else [])
  attribute = asks[int(rng.integers(len(asks)))]
  if attribute == "count":
    wrong = [n for n in range(1, max_objects + 1) if n != len(scene)]
    wrong_value = wrong[int(rng.integers(len(wrong)))]
    return Question(lex["questions"]["count"], answer_word(lang, "count", len(scene)),
                    answer_word(lang, "count", wrong_value), "count", len(scene), wrong_value, -1)
  index = int(rng.integers(len(scene)))
  obj = scene[index]
  unique = [by for by in ("shape", "colour", "position") if by != attribute
            and sum(getattr(o, by) == getattr(obj, by) for o in scene) == 1]
  if not unique:  # "where is ...?" about one of two objects of the same shape and colour
    attribute = asks[int(rng.integers(3))]  # ask its shape, colour or size; position refers
    unique = ["position"]
  by = unique[int(rng.integers(len(unique)))]
  text = lex["questions"][attribute].format(ref=_referent(lang, obj, by))
  if lang == "fr":
    text = text.replace(" de le ", " du ")
  value = getattr(obj, attribute)
  n_values = len(lex[attribute])
  wrong_value = (value + 1 + int(rng.integers(n_values - 1))) % n_values
  return Question(text, answer_word(lang, attribute, value),
                  answer_word(lang, attribute, wrong_value), attribute, value, wrong_value, index)


_CODE_TEMPLATES = (
    "draw({shape}, {colour}, {size}, at=({row}, {col}))",
    "{shape}({colour}, {size}, row={row}, col={col})",
    "at({row}, {col}).draw({size}, {colour}, {shape})",
)


def render_code(scene: Scene, rng: np.random.Generator) -> str:
  """A tiny program that would draw the scene's picture: one call per object, random order
  and call style. Positions are (row, column) on the 3x3 grid."""
  template = _CODE_TEMPLATES[int(rng.integers(len(_CODE_TEMPLATES)))]
  lex = LEXICON["en"]
  lines = []
  for i in rng.permutation(len(scene)):
    obj = scene[i]
    row, col = divmod(obj.position, GRID)
    lines.append(template.format(shape=lex["shape"][obj.shape][0], colour=lex["colour"][obj.colour],
                                 size=lex["size"][obj.size], row=row, col=col))
  return "\n".join(lines)
