"""Hand-written glyph catalogue: which OpenMoji glyphs may stand for which COCO 2014 category.

Only **semantically correct** glyphs are listed (docs/architecture.md §6.2): a glyph counts for a category when a COCO
annotator would put that category's label on the object it shows. Rules followed:

* One glyph, one COCO object. Glyphs that show two COCO objects (fork-and-knife U+1F374, bowl with spoon
  U+1F963, person biking U+1F6B4, snowboarder U+1F3C2, person surfing U+1F3C4, horse racing U+1F3C7,
  person in bed U+1F6CC, sake bottle-and-cup U+1F376) are left out: their second object would be an
  unlabelled positive.
* Near misses are left out: fire extinguisher U+1F9EF is not a fire hydrant, an animal mouse U+1F401 is
  not the computer "mouse" of COCO, a briefcase U+1F4BC is not a suitcase, a cocktail glass U+1F378 is
  not a wine glass, a dagger U+1F5E1 is not a table knife, a panda U+1F43C, a donkey and a water buffalo
  U+1F403 are left out of bear / horse / cow, gloves U+1F9E4 are not a baseball glove, badminton U+1F3F8
  is not tennis.
* A category without any correct glyph is left out of the benchmark (``NOT_DRAWABLE`` says why), so
  coco-moji uses the COCO label split restricted to ``drawable_categories()`` (docs/architecture.md §5.1).
* Only standard single-codepoint Unicode emoji are used (no ZWJ sequences, which need text shaping, and no
  OpenMoji private-use extras, whose codepoints are not stable across releases).

Borderline choices that follow COCO's annotation practice are marked "judgement:" in a comment.
``DISTRACTORS`` are glyphs that are no COCO category at all (smileys, symbols, flags, weather, animals
COCO lacks); they are drawn unlabelled. Things easily mistaken for a COCO object (balls: globe, bomb,
yarn, balloon; hands; a bench: construction barrier; a handbag: padlock; a bottle: test tube) are kept
out of the distractors too.

The test suite renders every codepoint listed here from the font and checks it is a real, non-empty
glyph (not the font's .notdef box).
"""

from __future__ import annotations

# Official COCO 2014 instance categories: (id, name, supercategory). The ids have gaps (12, 26, 29, ...).
COCO_2014_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"),
    (65, "bed", "furniture"), (67, "dining table", "furniture"), (70, "toilet", "furniture"),
    (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"), (84, "book", "indoor"),
    (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)

# COCO category name -> codepoints of OpenMoji glyphs that show exactly that object.
GLYPHS: dict[str, tuple[int, ...]] = {
    # full-body people only (standing, walking, running, kneeling, two dancers); busts are left out
    "person": (0x1F9CD, 0x1F6B6, 0x1F3C3, 0x1F9CE, 0x1F483, 0x1F57A),
    "bicycle": (0x1F6B2,),
    # automobile, taxi, SUV, oncoming automobile, racing car, police cars (COCO labels these "car")
    "car": (0x1F697, 0x1F695, 0x1F699, 0x1F698, 0x1F3CE, 0x1F693, 0x1F694),
    # judgement: motor scooter U+1F6F5 - COCO annotates mopeds and scooters as "motorcycle"
    "motorcycle": (0x1F3CD, 0x1F6F5),
    "airplane": (0x2708, 0x1F6EB, 0x1F6EC, 0x1F6E9),
    # judgement: trolleybus U+1F68E is a bus on overhead wires; minibus U+1F690 (drawn as a van) left out
    "bus": (0x1F68C, 0x1F68D, 0x1F68E),
    # train, locomotive, railway car, high-speed trains, light rail; metro sign, tram, monorail left out
    "train": (0x1F686, 0x1F682, 0x1F683, 0x1F684, 0x1F685, 0x1F688),
    # articulated lorry, pickup truck, fire engine; delivery truck U+1F69A (drawn as a van) left out
    "truck": (0x1F69B, 0x1F6FB, 0x1F692),
    # sailboat, speedboat, canoe, passenger ship, ship, ferry, motor boat
    "boat": (0x26F5, 0x1F6A4, 0x1F6F6, 0x1F6F3, 0x1F6A2, 0x26F4, 0x1F6E5),
    "traffic light": (0x1F6A6, 0x1F6A5),
    "stop sign": (0x1F6D1,),
    # bird, dove, eagle, duck, owl, parrot, swan, peacock, flamingo, penguin, rooster, turkey, goose
    "bird": (0x1F426, 0x1F54A, 0x1F985, 0x1F986, 0x1F989, 0x1F99C, 0x1F9A2, 0x1F99A, 0x1F9A9, 0x1F427,
             0x1F413, 0x1F983, 0x1FABF),
    "cat": (0x1F408, 0x1F431),  # cat, cat face (the plain animal face, not the emotive cat smileys)
    "dog": (0x1F415, 0x1F436, 0x1F429, 0x1F9AE),  # dog, dog face, poodle, guide dog
    "horse": (0x1F40E, 0x1F434),  # horse, horse face; unicorn and horse racing (has a rider) left out
    "sheep": (0x1F411, 0x1F40F),  # ewe, ram
    # judgement: ox U+1F402 - COCO's "cow" covers domestic cattle of either sex
    "cow": (0x1F404, 0x1F42E, 0x1F402),
    "elephant": (0x1F418,),
    "bear": (0x1F43B,),
    "zebra": (0x1F993,),
    "giraffe": (0x1F992,),
    "backpack": (0x1F392,),
    # umbrella, umbrella with rain drops, closed umbrella; judgement: beach umbrella U+26F1 is an umbrella
    "umbrella": (0x2602, 0x2614, 0x1F302, 0x26F1),
    "handbag": (0x1F45C, 0x1F45D),  # handbag, clutch bag (COCO "handbag" includes purses)
    # judgement: necktie U+1F454 is drawn on a shirt collar; the tie is the salient object
    "tie": (0x1F454,),
    "suitcase": (0x1F9F3,),  # luggage
    "frisbee": (0x1F94F,),  # flying disc
    "skis": (0x1F3BF,),
    # soccer, basketball, baseball, tennis, american football, rugby, volleyball, softball
    "sports ball": (0x26BD, 0x1F3C0, 0x26BE, 0x1F3BE, 0x1F3C8, 0x1F3C9, 0x1F3D0, 0x1F94E),
    "kite": (0x1FA81,),
    "skateboard": (0x1F6F9,),
    # baby bottle, bottle with popping cork; judgement: lotion bottle U+1F9F4 is a pump bottle
    "bottle": (0x1F37C, 0x1F37E, 0x1F9F4),
    # judgement: clinking glasses U+1F942 are stemmed champagne flutes, which COCO labels "wine glass"
    "wine glass": (0x1F377, 0x1F942),
    # hot beverage, teacup without handle, cup with straw, bubble tea (a cup with a straw);
    # judgement: the handle-less teacup U+1F375 is drawn wide and can look like a bowl at 96 px
    "cup": (0x2615, 0x1F375, 0x1F964, 0x1F9CB),
    "knife": (0x1F52A,),  # kitchen knife (hocho)
    "spoon": (0x1F944,),
    # steaming bowl, cooked rice (a rice bowl); bowl with spoon U+1F963 left out (it also shows a spoon)
    "bowl": (0x1F35C, 0x1F35A),
    "banana": (0x1F34C,),
    "apple": (0x1F34E, 0x1F34F),  # red apple, green apple
    "sandwich": (0x1F96A,),
    "orange": (0x1F34A,),  # tangerine
    "broccoli": (0x1F966,),
    "carrot": (0x1F955,),
    "hot dog": (0x1F32D,),
    "pizza": (0x1F355,),
    "donut": (0x1F369,),
    # birthday cake, shortcake; judgement: cupcake U+1F9C1 - COCO annotates cupcakes as "cake"
    "cake": (0x1F382, 0x1F370, 0x1F9C1),
    "chair": (0x1FA91,),
    "couch": (0x1F6CB,),  # couch and lamp (the lamp is no COCO category)
    "potted plant": (0x1FAB4,),
    "bed": (0x1F6CF,),
    "toilet": (0x1F6BD,),
    # television; judgement: desktop computer U+1F5A5 is a monitor, which COCO labels "tv"
    "tv": (0x1F4FA, 0x1F5A5),
    "laptop": (0x1F4BB,),
    "mouse": (0x1F5B1,),  # computer mouse, never the animal U+1F401
    "keyboard": (0x2328,),
    "cell phone": (0x1F4F1,),
    # closed book, open book, green / blue / orange books, books
    "book": (0x1F4D5, 0x1F4D6, 0x1F4D7, 0x1F4D8, 0x1F4D9, 0x1F4DA),
    # mantelpiece clock, alarm clock, clock faces (one o'clock, four o'clock)
    "clock": (0x1F570, 0x23F0, 0x1F550, 0x1F553),
    # judgement: amphora U+1F3FA, a two-handled ornamental jar drawn as a vase; the only vase-like glyph
    "vase": (0x1F3FA,),
    "scissors": (0x2702,),
    "teddy bear": (0x1F9F8,),
    "toothbrush": (0x1FAA5,),
}

# Categories without a correct single-codepoint glyph, and why.
NOT_DRAWABLE: dict[str, str] = {
    "fire hydrant": "no emoji; the fire extinguisher is a different object",
    "parking meter": "no emoji; the P button is a sign",
    "bench": "no emoji",
    "snowboard": "only the snowboarder, which also shows a person",
    "baseball bat": "no emoji; the cricket bat is a different object",
    "baseball glove": "no emoji; gloves are not a baseball glove",
    "surfboard": "only the person surfing, which also shows a person",
    "tennis racket": "no emoji; the badminton racquet is a different object",
    "fork": "only fork-and-knife glyphs, which also show a knife",
    "dining table": "no emoji",
    "remote": "no emoji",
    "microwave": "no emoji",
    "oven": "no emoji",
    "toaster": "no emoji",
    "sink": "no emoji",
    "refrigerator": "no emoji",
    "hair drier": "no emoji",
}

# Unlabelled distractors: no COCO category. Smileys, symbols, flags, weather, nature, animals COCO lacks.
DISTRACTORS: tuple[int, ...] = (
    0x1F600, 0x1F603, 0x1F60A, 0x1F60E, 0x1F642, 0x1F609, 0x1F928,  # smiley faces
    0x2764, 0x2B50, 0x1F525, 0x26A1, 0x1F308, 0x2744, 0x1F319, 0x2600, 0x2601, 0x1F4A5, 0x1F4A7,
    0x1F340, 0x1F344, 0x1F338, 0x1F332, 0x1FAB5, 0x1F30B, 0x1F3D4,  # nature
    0x1F3B5, 0x1F381, 0x1F511, 0x1F4CE, 0x1F4CC, 0x2699, 0x1F3B2, 0x1F9E9, 0x1F48E, 0x1F514,
    0x1F3B8, 0x1F941, 0x1F3BA, 0x1F52D, 0x2693, 0x1F52E, 0x1F9F1, 0x1F4E6, 0x1F4E1, 0x1F52C,
    0x1F4A1, 0x1F3A8, 0x1F9F2, 0x1F50B, 0x1F9ED,  # objects COCO lacks
    0x1F3C1, 0x1F6A9, 0x1F3F3, 0x1F38C,  # flags
    0x1F4A0, 0x1F4AF, 0x267B, 0x262E, 0x2622,  # symbols
    0x1F98B, 0x1F41F, 0x1F40C, 0x1F41E, 0x1F422, 0x1F40D,  # animals COCO lacks
)

COCO_ID_OF: dict[str, int] = {name: category_id for category_id, name, _ in COCO_2014_CATEGORIES}
SUPERCATEGORY_OF: dict[str, str] = {name: supercategory for _, name, supercategory in COCO_2014_CATEGORIES}


def drawable_categories() -> list[str]:
    """COCO names of the categories the generator can draw, in COCO category-id order."""
    return [name for _, name, _ in COCO_2014_CATEGORIES if name in GLYPHS]
