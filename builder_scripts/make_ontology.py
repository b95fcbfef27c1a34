"""Write ``radgenome_hf/data/ontology.json``: the anatomy ontology the package ships.

The data file is the source of truth at run time; this script documents where each part comes from and
rebuilds the file when the lists below change. Sources (see shared/reference/data-formats.md):

* paths: every ``Anatomy`` path of the real RadGenome VQA files (2,000-volume subset: 174 paths, depth 1–5),
  completed where the real files show a pattern only partly (all 12 ribs on each side, C1–C7, T1–T12, L1–L5);
* region masks: the 10 region names of ``*_region_mask/seg_<volume>/<region>.nii.gz`` (Reg2RG ``REGIONS``);
* anatomy masks: SAT-style category names (lower case, spaces) for the nodes SAT segments, plus the lesion
  masks seen in the release (``lung nodule``, ``lung effusion``, kidney cysts). The real list has 197 names;
  masks with names not listed here are still read (the ontology only needs them to ground paths);
* CT-RATE's 18 labels with their organ (fVLM ``eval.py`` mapping; Lymphadenopathy -> mediastinum and Medical
  material -> whole scan are this project's choice, fVLM does not evaluate them);
* TotalSegmentator ``total`` class names (v2, and the v1 names MONAI's wholeBody bundle uses) -> ontology nodes.

Run: ``python builder_scripts/make_ontology.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "radgenome_hf" / "data" / "ontology.json"

REGIONS = ["abdomen", "bone", "breast", "esophagus", "heart", "lung", "mediastinum", "pleura", "thyroid",
           "trachea and bronchie"]
TOP_LEVEL = ["lung", "trachea and bronchie", "pleura", "mediastinum", "heart", "esophagus", "bone", "thyroid",
             "breast", "abdomen", "others"]


def build_paths() -> list[str]:
    p: list[str] = []
    add = p.append
    # lung
    add("lung"); add("lung/lung")
    for side in ("left", "right"):
        add(f"lung/lung/{side} lung")
    for lobe in ("upper", "lower"):
        add(f"lung/lung/lung {lobe} lobe")
    for side, lobes in (("left", ("upper", "lower")), ("right", ("upper", "middle", "lower"))):
        for lobe in lobes:
            add(f"lung/lung/{side} lung/{side} lung {lobe} lobe")
            if lobe != "middle":
                add(f"lung/lung/lung {lobe} lobe/{side} lung {lobe} lobe")
    # airways, pleura
    add("trachea and bronchie"); add("trachea and bronchie/trachea"); add("trachea and bronchie/bronchie")
    add("pleura"); add("pleura/pleura")
    # mediastinum: second level is the organ itself
    add("mediastinum")
    for organ in ("mediastinal tissue", "aorta", "pulmonary artery", "pulmonary vein", "superior vena cava",
                  "thymus", "subclavian artery"):
        add(f"mediastinum/{organ}")
    for side in ("left", "right"):
        add(f"mediastinum/subclavian artery/{side} subclavian artery")
    # heart
    add("heart"); add("heart/heart")
    for part in ("heart tissue", "heart ascending aorta", "heart atrium", "heart ventricle"):
        add(f"heart/heart/{part}")
    for side in ("left", "right"):
        add(f"heart/heart/heart atrium/{side} heart atrium")
        add(f"heart/heart/heart ventricle/{side} heart ventricle")
    # esophagus, thyroid, breast
    add("esophagus"); add("esophagus/esophagus"); add("esophagus/esophagus/cervical esophagus")
    add("thyroid"); add("thyroid/thyroid"); add("thyroid/thyroid/thyroid gland")
    for side in ("left", "right"):
        add(f"thyroid/thyroid/thyroid gland/{side} thyroid")
    add("breast"); add("breast/breast")
    for side in ("left", "right"):
        add(f"breast/breast/{side} breast")
    # bone
    add("bone"); add("bone/bone")
    add("bone/bone/vertebrae")
    for group, letter, n in (("cervical", "c", 7), ("thoracic", "t", 12), ("lumbar", "l", 5)):
        add(f"bone/bone/vertebrae/{group} vertebrae")
        for i in range(1, n + 1):
            add(f"bone/bone/vertebrae/{group} vertebrae/{group} vertebrae {i} ({letter}{i})")
    add("bone/bone/rib")
    for side in ("left", "right"):
        add(f"bone/bone/rib/{side} rib")
        for i in range(1, 13):
            add(f"bone/bone/rib/{side} rib/{side} rib {i}")
    for i in range(1, 13):
        add(f"bone/bone/rib/rib {i}")
        for side in ("left", "right"):
            add(f"bone/bone/rib/rib {i}/{side} rib {i}")
    for bone in ("clavicle", "humerus", "scapula"):
        add(f"bone/bone/{bone}")
        for side in ("left", "right"):
            add(f"bone/bone/{bone}/{side} {bone}")
    add("bone/bone/sternum"); add("bone/bone/sternum/manubrium of sternum"); add("bone/bone/spinal canal")
    # abdomen
    add("abdomen"); add("abdomen/abdomen")
    for organ in ("liver", "gallbladder", "spleen", "pancreas", "stomach", "kidney", "adrenal gland", "aorta",
                  "celiac trunk", "colon", "intestine", "renal artery", "portal vein and splenic vein",
                  "abdominal tissue"):
        add(f"abdomen/abdomen/{organ}")
    add("abdomen/abdomen/liver/caudate lobe"); add("abdomen/abdomen/liver/liver vessel")
    for side in ("left", "right"):
        add(f"abdomen/abdomen/kidney/{side} kidney")
        add(f"abdomen/abdomen/adrenal gland/{side} adrenal gland")
    # others
    add("others")
    for organ in ("thoracic cavity", "larynx", "prostate", "urinary bladder", "iliac artery", "iliac vena",
                  "inferior vena cava"):
        add(f"others/{organ}")
    assert len(p) == len(set(p)), "duplicate path"
    return p


# Node names (last path components) that SAT segments, so a `<name>.nii.gz` anatomy mask grounds them.
def anatomy_mask_names() -> list[str]:
    names = ["lung", "left lung", "right lung",
             "left lung upper lobe", "left lung lower lobe", "right lung upper lobe", "right lung middle lobe",
             "right lung lower lobe", "trachea", "bronchie", "esophagus", "cervical esophagus", "heart",
             "left heart atrium", "right heart atrium", "left heart ventricle", "right heart ventricle",
             "heart ascending aorta", "myocardium", "aorta", "pulmonary artery", "pulmonary vein",
             "superior vena cava", "inferior vena cava", "thymus", "left subclavian artery",
             "right subclavian artery", "thyroid gland", "left thyroid", "right thyroid",
             "left breast", "right breast", "spinal canal", "sternum", "manubrium of sternum",
             "left clavicle", "right clavicle", "left humerus", "right humerus", "left scapula", "right scapula",
             "liver", "caudate lobe", "gallbladder", "spleen", "pancreas", "stomach", "left kidney", "right kidney",
             "left adrenal gland", "right adrenal gland", "celiac trunk", "colon", "intestine", "renal artery",
             "portal vein and splenic vein", "larynx", "prostate", "urinary bladder", "iliac artery", "iliac vena",
             "thoracic cavity",
             # lesion masks seen in the release
             "lung nodule", "lung effusion", "left kidney cyst", "right kidney cyst"]
    for side in ("left", "right"):
        names += [f"{side} rib {i}" for i in range(1, 13)]
    for group, letter, n in (("cervical", "c", 7), ("thoracic", "t", 12), ("lumbar", "l", 5)):
        names += [f"{group} vertebrae {i} ({letter}{i})" for i in range(1, n + 1)]
    return names


# Words a report uses for a node (lower case; plural/adjective forms the grounding lexicon should match).
SYNONYMS = {
    "lung": ["lungs", "pulmonary", "parenchyma", "parenchymal", "lung parenchyma", "bilateral lungs"],
    "left lung": ["left hemithorax"],
    "right lung": ["right hemithorax"],
    "lung upper lobe": ["upper lobes", "upper lobe", "bilateral upper lobes", "apices", "apical"],
    "lung lower lobe": ["lower lobes", "lower lobe", "bilateral lower lobes", "basal", "bases"],
    "left lung upper lobe": ["left upper lobe", "left upper lung lobe", "lingula", "lingular", "lul"],
    "left lung lower lobe": ["left lower lobe", "left lower lung lobe", "lll"],
    "right lung upper lobe": ["right upper lobe", "right upper lung lobe", "rul"],
    "right lung middle lobe": ["right middle lobe", "middle lobe", "rml"],
    "right lung lower lobe": ["right lower lobe", "right lower lung lobe", "rll"],
    "trachea and bronchie": ["airway", "airways"],
    "trachea": ["tracheal", "trachea lumen"],
    "bronchie": ["bronchi", "bronchus", "bronchial", "bronchial wall", "peribronchial", "bronchiectasis"],
    "pleura": ["pleural", "pleural effusion", "pleural thickening", "pleural space"],
    "mediastinum": ["mediastinal", "mediastinal lymph node", "mediastinal lymph nodes", "lymphadenopathy"],
    "mediastinal tissue": ["mediastinal lymph nodes", "lymph nodes", "lymph node", "mediastinal fat"],
    "aorta": ["aortic", "thoracic aorta", "aortic arch", "descending aorta"],
    "pulmonary artery": ["pulmonary arteries", "pulmonary trunk", "main pulmonary artery"],
    "pulmonary vein": ["pulmonary veins"],
    "superior vena cava": ["svc"],
    "inferior vena cava": ["ivc"],
    "thymus": ["thymic"],
    "subclavian artery": ["subclavian arteries"],
    "heart": ["cardiac", "cardiomegaly", "pericardium", "pericardial", "pericardial effusion", "coronary",
              "coronary arteries", "heart contour"],
    "heart tissue": ["myocardium", "myocardial"],
    "heart ascending aorta": ["ascending aorta"],
    "heart atrium": ["atrium", "atria", "atrial"],
    "heart ventricle": ["ventricle", "ventricles", "ventricular"],
    "esophagus": ["esophageal", "oesophagus", "hiatal hernia", "hiatus hernia"],
    "cervical esophagus": ["cervical esophageal"],
    "thyroid": ["thyroid"],
    "thyroid gland": ["thyroid gland", "thyroid lobe", "thyroid nodule"],
    "left thyroid": ["left thyroid lobe"],
    "right thyroid": ["right thyroid lobe"],
    "breast": ["breasts", "mammary"],
    "bone": ["bones", "osseous", "bony", "skeletal", "bone structures"],
    "vertebrae": ["vertebra", "vertebral", "vertebral bodies", "vertebral body", "spine", "spinal",
                  "spondylosis", "spondylotic"],
    "thoracic vertebrae": ["thoracic spine", "thoracic vertebra", "dorsal spine"],
    "cervical vertebrae": ["cervical spine", "cervical vertebra"],
    "lumbar vertebrae": ["lumbar spine", "lumbar vertebra"],
    "rib": ["ribs", "costal", "costochondral"],
    "clavicle": ["clavicles", "clavicular"],
    "humerus": ["humeral", "humeri"],
    "scapula": ["scapulae", "scapular"],
    "sternum": ["sternal"],
    "manubrium of sternum": ["manubrium", "manubrial"],
    "spinal canal": ["spinal cord", "canal"],
    "abdomen": ["abdominal", "upper abdomen", "upper abdominal", "sections of the upper abdomen"],
    "liver": ["hepatic", "liver parenchyma"],
    "gallbladder": ["gall bladder", "cholelithiasis", "gallstone", "gallstones"],
    "spleen": ["splenic", "splenomegaly"],
    "pancreas": ["pancreatic"],
    "stomach": ["gastric"],
    "kidney": ["kidneys", "renal"],
    "adrenal gland": ["adrenal", "adrenal glands", "adrenals"],
    "colon": ["colonic"],
    "intestine": ["intestines", "bowel", "intestinal", "small bowel", "bowel loops"],
    "abdominal tissue": ["abdominal wall", "abdominal fat"],
    "others": [],
    "thoracic cavity": ["thorax", "chest wall", "thoracic wall", "chest"],
    "larynx": ["laryngeal"],
}

CTRATE_LABELS = [
    # (label, fVLM organ or None, ontology path of the organ)
    ("Medical material", None, None),
    ("Arterial wall calcification", "aorta", "mediastinum/aorta"),
    ("Cardiomegaly", "heart", "heart"),
    ("Pericardial effusion", "heart", "heart"),
    ("Coronary artery wall calcification", "heart", "heart"),
    ("Hiatal hernia", "esophagus", "esophagus"),
    ("Lymphadenopathy", "mediastinum", "mediastinum"),
    ("Emphysema", "lung", "lung"),
    ("Atelectasis", "lung", "lung"),
    ("Lung nodule", "lung", "lung"),
    ("Lung opacity", "lung", "lung"),
    ("Pulmonary fibrotic sequela", "lung", "lung"),
    ("Pleural effusion", "lung", "pleura"),
    ("Mosaic attenuation pattern", "lung", "lung"),
    ("Peribronchial thickening", "lung", "trachea and bronchie/bronchie"),
    ("Consolidation", "lung", "lung"),
    ("Bronchiectasis", "lung", "trachea and bronchie/bronchie"),
    ("Interlobular septal thickening", "lung", "lung"),
]

# fVLM's four anatomies (merged TotalSegmentator classes) and the ontology node each caption is grounded to.
FVLM_ORGANS = {"lung": "lung", "heart": "heart", "esophagus": "esophagus", "aorta": "mediastinum/aorta",
               "mediastinum": "mediastinum"}


def totalsegmentator_map() -> dict[str, str]:
    m = {
        "lung_upper_lobe_left": "left lung upper lobe", "lung_lower_lobe_left": "left lung lower lobe",
        "lung_upper_lobe_right": "right lung upper lobe", "lung_middle_lobe_right": "right lung middle lobe",
        "lung_lower_lobe_right": "right lung lower lobe", "esophagus": "esophagus", "trachea": "trachea",
        "thyroid_gland": "thyroid gland", "heart": "heart", "aorta": "aorta", "pulmonary_vein": "pulmonary vein",
        "subclavian_artery_right": "right subclavian artery", "subclavian_artery_left": "left subclavian artery",
        "superior_vena_cava": "superior vena cava", "inferior_vena_cava": "inferior vena cava",
        "humerus_left": "left humerus", "humerus_right": "right humerus", "scapula_left": "left scapula",
        "scapula_right": "right scapula", "clavicula_left": "left clavicle", "clavicula_right": "right clavicle",
        "sternum": "sternum", "spinal_cord": "spinal canal", "liver": "liver", "spleen": "spleen",
        "gallbladder": "gallbladder", "pancreas": "pancreas", "stomach": "stomach", "kidney_left": "left kidney",
        "kidney_right": "right kidney", "adrenal_gland_left": "left adrenal gland",
        "adrenal_gland_right": "right adrenal gland", "colon": "colon", "small_bowel": "intestine",
        "duodenum": "intestine", "urinary_bladder": "urinary bladder", "prostate": "prostate",
        "portal_vein_and_splenic_vein": "portal vein and splenic vein", "iliac_artery_left": "iliac artery",
        "iliac_artery_right": "iliac artery", "iliac_vena_left": "iliac vena", "iliac_vena_right": "iliac vena",
        "atrial_appendage_left": "left heart atrium",
        # TotalSegmentator v1 names (MONAI wholeBody_ct_segmentation channel_def)
        "pulmonary_artery": "pulmonary artery", "heart_myocardium": "myocardium",
        "heart_atrium_left": "left heart atrium", "heart_atrium_right": "right heart atrium",
        "heart_ventricle_left": "left heart ventricle", "heart_ventricle_right": "right heart ventricle",
        "face": None, "brain": None,
    }
    for side in ("left", "right"):
        for i in range(1, 13):
            m[f"rib_{side}_{i}"] = f"{side} rib {i}"
    for letter, group, n in (("C", "cervical", 7), ("T", "thoracic", 12), ("L", "lumbar", 5)):
        for i in range(1, n + 1):
            m[f"vertebrae_{letter}{i}"] = f"{group} vertebrae {i} ({letter.lower()}{i})"
    return {k: v for k, v in m.items() if v is not None}


def main() -> None:
    paths = build_paths()
    node_names = sorted({part for p in paths for part in p.split("/")})
    masks = anatomy_mask_names()
    unknown = [s for s in SYNONYMS if s not in node_names]
    assert not unknown, unknown
    doc = {
        "version": 1,
        "description": "RadGenome-ChestCT anatomy ontology shipped by radgenome_hf (see builder_scripts/make_ontology.py).",
        "top_level": TOP_LEVEL,
        "region_masks": REGIONS,
        "anatomy_masks": masks,
        "paths": paths,
        "synonyms": {k: SYNONYMS[k] for k in sorted(SYNONYMS)},
        "ctrate_labels": [{"label": l, "fvlm_organ": o, "path": p} for l, o, p in CTRATE_LABELS],
        "fvlm_organs": FVLM_ORGANS,
        "totalsegmentator": dict(sorted(totalsegmentator_map().items())),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT}: {len(paths)} paths, {len(node_names)} node names, {len(masks)} anatomy masks")


if __name__ == "__main__":
    main()
