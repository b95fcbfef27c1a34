"""Sentence splitting, the ontology lexicon, sentence analysis, region_report rows and the LLM grounding backend."""

from __future__ import annotations

import csv
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from radgenome_hf.generate.ground import (
    GroundedReport,
    Lexicon,
    analyze_sentence,
    ground_report,
    region_report_rows,
    split_sentences,
    write_region_report,
)
from radgenome_hf.ontology import get_lexicon_data, get_ontology

RLL = ("lung/lung/right lung/right lung lower lobe", "lung/lung/lung lower lobe/right lung lower lobe")
LLL = ("lung/lung/left lung/left lung lower lobe", "lung/lung/lung lower lobe/left lung lower lobe")
RUL = ("lung/lung/right lung/right lung upper lobe", "lung/lung/lung upper lobe/right lung upper lobe")
T12 = "bone/bone/vertebrae/thoracic vertebrae/thoracic vertebrae 12 (t12)"


@pytest.mark.parametrize("text, expected", [
    ("A nodule of approx. 6.6 mm is seen. No effusion.", ["A nodule of approx. 6.6 mm is seen.", "No effusion."]),
    ("Findings, e.g. nodules, are noted. Heart is normal.", ["Findings, e.g. nodules, are noted.", "Heart is normal."]),
    ("Heart size is normal.No pleural effusion.", ["Heart size is normal.", "No pleural effusion."]),
    ("Nodule i.e. 3 mm in the RUL! Stable?", ["Nodule i.e. 3 mm in the RUL!", "Stable?"]),
    ("When examined in the lung parenchyma window; Several nodules are observed.",
     ["When examined in the lung parenchyma window; Several nodules are observed."]),
    ("Not given.", []),
    (None, []),
    ("Trailing text without a stop", ["Trailing text without a stop"]),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize("sentence, expected", [
    # lobes: synonyms, "lower lobe of the left lung", laterality composition, both groupings
    ("Atelectasis in the lower lobe of the left lung.", LLL),
    ("A nodule in the right lower lobe.", RLL),
    ("Nodule in the RLL.", RLL),
    ("Ground glass areas in the upper lobe of the right lung.", RUL),
    ("Consolidation in the right middle lobe.", ("lung/lung/right lung/right lung middle lobe",)),
    # laterality on organs with sided children
    ("A cyst in the left kidney.", ("abdomen/abdomen/kidney/left kidney",)),
    ("Right-sided pleural effusion.", ("pleura/pleura",)),
    ("Nodules are observed in both lungs.", ("lung/lung",)),
    # plurals and synonyms
    ("Bilateral pleural effusions.", ("pleura/pleura",)),
    ("Mediastinal lymph nodes are enlarged.", ("mediastinum/mediastinal tissue",)),
    ("Cardiomegaly.", ("heart/heart",)),
    # vertebral levels
    ("Compression fracture of the T12 vertebra.", (T12,)),
    ("Compression fracture of the t12 vertebra.", (T12,)),
    ("Degenerative changes in the thoracic 12th vertebra.", (T12,)),
    ("Schmorl nodes at L1.", ("bone/bone/vertebrae/lumbar vertebrae/lumbar vertebrae 1 (l1)",)),
    # ribs
    ("Fracture of the left 7th rib.", ("bone/bone/rib/left rib/left rib 7", "bone/bone/rib/rib 7/left rib 7")),
    ("Old fracture of rib 7.", ("bone/bone/rib/rib 7",)),
    ("Fractures of the 5th and 6th ribs on the right.",
     ("bone/bone/rib/right rib/right rib 5", "bone/bone/rib/rib 5/right rib 5",
      "bone/bone/rib/right rib/right rib 6", "bone/bone/rib/rib 6/right rib 6")),
    # a node under two regions takes the region named alongside it
    ("Calcified plaques in the abdominal aorta.", ("abdomen/abdomen/aorta",)),
    ("Calcified plaques in the thoracic aorta.", ("mediastinum/aorta",)),
    ("The patient was examined.", ()),
])
def test_lexicon_match(sentence, expected):
    assert Lexicon.default().match(sentence) == expected


def test_lexicon_paths_are_ontology_paths():
    onto = get_ontology()
    lex = Lexicon.default()
    for name, paths in lex.node_paths.items():
        assert all(p in onto for p in paths)
    # every ontology synonym of a path node is a lexicon term of that node, unless the learned lexicon places the
    # word where RadGenome's rows do ("lingular" -> the left lung)
    moved = get_lexicon_data()["anatomy_terms"]
    for name in lex.node_paths:
        for syn in onto.synonyms_of(name):
            if syn.lower() in moved:
                assert lex.terms[syn.lower()] == {moved[syn.lower()]}
                continue
            assert name in lex.terms[syn.lower()] or any(name in lex.ancestor_names.get(n, ()) or n == name
                                                         for n in lex.terms[syn.lower()])


@pytest.mark.parametrize("sentence, abnormal, findings, negated", [
    ("Ground glass areas and atelectasis are observed in the lower lobe of the left lung.", True,
     ("ground glass areas", "atelectasis"), ()),
    ("No mass or lymph nodes in pathological size were detected.", False, (), ("mass", "lymph nodes")),
    ("Heart contour and size are within normal limits.", False, (), ()),
    ("Pericardial effusion-thickening was not observed.", False, (), ("pericardial effusion-thickening",)),
    ("Calcific atheroma plaques are observed in the aorta.", True, ("calcific atheroma plaques",), ()),
    ("Thoracic esophagus is normal, but a sliding type hiatal hernia is seen.", True,
     ("sliding type hiatal hernia",), ()),
    ("The ascending aorta is dilated.", True, ("dilated",), ()),
])
def test_analyze_sentence(sentence, abnormal, findings, negated):
    s = analyze_sentence(sentence)
    assert (s.abnormal, s.findings, s.negated) == (abnormal, findings, negated)


@pytest.mark.parametrize("sentence, comparison", [
    ("The nodule in the right upper lobe has grown and now measures 12 mm.", "worsened"),
    ("Pleural effusion has increased compared to the previous examination.", "worsened"),
    ("The nodule has decreased in size and now measures 8 mm.", "improved"),
    ("The nodule in the left lower lobe is stable.", "no change"),
    ("A new nodule is seen in the right middle lobe.", "new"),
    ("No new nodule was detected.", None),
    ("The pleural effusion has resolved.", "resolved"),
    ("Increased density in the right lung.", None),
])
def test_comparison_cues(sentence, comparison):
    assert analyze_sentence(sentence).comparison == comparison


def test_size_belongs_to_its_finding():
    s = analyze_sentence("A 6x4 mm nodule and a 2 cm cyst in the left kidney.")
    assert [z.text for z in s.sizes] == ["6x4 mm", "2 cm"]
    assert s.size_findings == ("nodule", "cyst")


def test_region_report_rows_every_level_and_join():
    ss = ground_report("A nodule in the right lower lobe. Atelectasis in the right lower lobe. "
                       "The patient was examined in the supine position.", "Cardiomegaly.")
    rows = region_report_rows("train_7_b_2", ss)
    keys = [(v, a) for v, a, _ in rows]
    assert len(keys) == len(set(keys)), "unique (volume, Anatomy)"
    assert all(v == "train_7_b_2.nii.gz" for v, _, _ in rows)
    by = {a: s for _, a, s in rows}
    onto = get_ontology()
    for p in RLL:
        for a in onto.ancestors(p):
            assert by[a] == "A nodule in the right lower lobe. Atelectasis in the right lower lobe."
    assert by["heart"] == by["heart/heart"] == "Cardiomegaly."
    assert by[""] == "The patient was examined in the supine position."
    assert rows[0][1] == ""  # whole-scan row first
    assert keys.index(("train_7_b_2.nii.gz", "lung")) < keys.index(("train_7_b_2.nii.gz", "lung/lung"))


def test_region_report_file_format(tmp_path):
    g = {"train_1_a_1": GroundedReport("train_1_a_1", ground_report(
        "Nodules, some calcified, in the right lower lobe. Unremarkable exam otherwise.", None))}
    p = write_region_report(tmp_path / "train_region_report.csv", g)
    raw = p.read_bytes()
    assert raw.startswith(b"Volumename,Anatomy,Sentence\n")
    assert b"\r\n" not in raw and raw.endswith(b"\n")
    assert b'"Nodules, some calcified, in the right lower lobe."' in raw  # quoted only because of the comma
    assert b"\ntrain_1_a_1.nii.gz,,Unremarkable exam otherwise.\n" in raw  # whole scan: empty Anatomy, no quotes
    rows = list(csv.reader(io.StringIO(raw.decode())))
    assert {r[1] for r in rows[1:]} >= {"lung", "lung/lung", "lung/lung/right lung", *RLL, "lung/lung/lung lower lobe"}
    assert not list(tmp_path.glob(".*tmp*"))


# -- LLM backend against a stand-in server -----------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    answers: list[dict] = []
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        content = type(self).answers.pop(0) if type(self).answers else {"0": []}
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": json.dumps(content)}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def llm_server():
    _Handler.answers, _Handler.seen = [], []
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    server.timeout = 5
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Handler
    server.shutdown()
    server.server_close()
    t.join(5)


def test_llm_backend_validates_paths(llm_server, caplog):
    from radgenome_hf.generate.llm import OpenAIChatBackend

    url, handler = llm_server
    handler.answers = [{"0": ["lung/lung/right lung", "lung/made up lobe"], "1": ["heart/heart"]},
                       {"0": []}]
    be = OpenAIChatBackend(endpoint=url, model="tiny", api_key="sk-secret-123", batch_size=2)
    out = be.ground(["Nodule in the right lung.", "Cardiomegaly.", "The exam was done."])
    assert out == [("lung/lung/right lung",), ("heart/heart",), ()]
    assert len(handler.seen) == 2  # bounded: one request per batch
    assert handler.seen[0]["path"] == "/v1/chat/completions"
    assert handler.seen[0]["auth"] == "Bearer sk-secret-123"
    assert handler.seen[0]["body"]["model"] == "tiny"
    assert "sk-secret-123" not in repr(be) and "sk-secret-123" not in caplog.text
    # plugged into ground_report, the backend's paths are used
    handler.answers = [{"0": ["pleura/pleura"]}]
    ss = ground_report("Something odd.", None, backend=be)
    assert ss[0].paths == ("pleura/pleura",)


def test_llm_backend_falls_back_to_lexicon(llm_server):
    from radgenome_hf.generate.llm import LLMError, OpenAIChatBackend

    url, handler = llm_server
    handler.answers = [{"unexpected": "shape"}]
    be = OpenAIChatBackend(endpoint=url, model="tiny")
    assert be.ground(["Nodule in the right lower lobe."]) == [RLL]
    with pytest.raises(LLMError, match="endpoint and a model"):
        OpenAIChatBackend(endpoint="", model="")
    dead = OpenAIChatBackend(endpoint="http://127.0.0.1:9/v1", model="m", timeout=1, max_retries=0, fallback=False)
    with pytest.raises(LLMError, match="request failed"):
        dead.ground(["x"])


# -- real-report grounding on synthetic text (own wording) --------------------------------------------------

LEFT_KIDNEY = ("abdomen/abdomen/kidney/left kidney",)


def test_double_space_items_are_sentences():
    assert split_sentences("Lung nodule  Aortic wall calcification  Renal cyst") == [
        "Lung nodule", "Aortic wall calcification", "Renal cyst"]
    ss = ground_report(None, "Emphysema  Cholelithiasis  Hepatosteatosis")
    assert [s.findings for s in ss] == [("emphysema",), ("cholelithiasis",), ("hepatosteatosis",)]
    assert split_sentences("Mosaic pattern (airway disease?, vessel disease?). Heart is normal.") == [
        "Mosaic pattern (airway disease?, vessel disease?).", "Heart is normal."]


def test_each_finding_to_its_own_anatomy():
    s = analyze_sentence("Emphysema is seen in both lungs, and a cyst is present in the left kidney.")
    assert dict(s.finding_paths) == {"emphysema": ("lung/lung",), "cyst": LEFT_KIDNEY}
    # an anatomy-only chunk continues the location of the finding before it
    s = analyze_sentence("Small nodules are seen in both lungs, the largest one in the lower lobe of the left lung.")
    assert dict(s.finding_paths)["small nodules"] == LLL  # most specific: lung/lung is an ancestor
    # a leading "In the X," names the anatomy of what follows; an opening about the window does not
    s = analyze_sentence("In the left kidney, a cyst is seen.")
    assert dict(s.finding_paths) == {"cyst": LEFT_KIDNEY}
    s = analyze_sentence("When examined in the lung parenchyma window; a cyst is seen in the left kidney.")
    assert s.paths == LEFT_KIDNEY


def test_back_reference_takes_previous_anatomy():
    ss = ground_report("A nodule is seen in the lower lobe of the left lung. Another nodule is noted in this "
                       "localization. Heart size is normal.", None)
    assert ss[1].paths == LLL and dict(ss[1].finding_paths) == {"nodule": LLL}
    assert ss[2].paths == ("heart/heart",)


def test_conventions_learned_from_real_rows():
    # aortic findings under both aortas, cardiac ones under heart tissue, the middle lobe as the right lung
    s = analyze_sentence("Calcified plaques are present in the aortic arch.")
    assert set(s.paths) == {"mediastinum/aorta", "abdomen/abdomen/aorta"}
    assert analyze_sentence("Cardiomegaly is present.").paths == ("heart/heart/heart tissue",)
    assert analyze_sentence("Consolidation in the right middle lobe.").paths == ("lung/lung/right lung",)
    # a finding naming its own organ goes there wherever the sentence points
    assert analyze_sentence("Hepatosteatosis.").paths == ("abdomen/abdomen/liver",)
    assert analyze_sentence("Bilateral gynecomastia is noted.").paths == ("breast/breast",)


@pytest.mark.parametrize("sentence", [
    "Pleural effusion - no thickening was detected.",
    "Pericardial effusion or thickening was not seen.",
    "No nodule, mass or consolidation is seen in either lung.",
    "There is no pleural effusion.",
    "Lymph nodes of pathological size were not detected in the mediastinum.",
])
def test_negated_wording_is_no_finding(sentence):
    s = analyze_sentence(sentence)
    assert not s.abnormal and s.findings == () and s.negated


def test_misspelling_and_lexicon_terms():
    s = analyze_sentence("Atelectesis in the right lower lobe.")
    assert s.abnormal and s.findings == ("atelectesis",) and s.paths == RLL
    for text, finding in [("Atelectatic changes in the left lower lobe.", "atelectatic changes"),
                          ("Bronchiectatic changes in both lungs.", "bronchiectatic changes"),
                          ("Emphysematous changes are seen in both lungs.", "emphysematous changes")]:
        assert analyze_sentence(text).findings == (finding,)


@pytest.mark.parametrize("sentence", [
    "Increased.",
    "The vertebrae are calcified.",
    "Density in the right lung.",
])
def test_bare_words_are_no_findings(sentence):
    assert analyze_sentence(sentence).findings == ()


def test_increased_heart_size_is_a_finding():
    # RadGenome's rows list "heart sizes", "cardiothoracic index" under the heart when they are increased
    assert analyze_sentence("Heart size increased.").finding_paths == (("heart size", ("heart/heart/heart tissue",)),)
    assert analyze_sentence("The cardiothoracic index is within normal limits.").findings == ()


def test_devices_are_no_findings():
    assert not analyze_sentence("A central venous catheter ends in the right atrium.").abnormal


def test_sizes_go_with_their_finding():
    from radgenome_hf.generate.vqa import size_rows

    s = analyze_sentence("A 6 mm nodule in the right lower lobe, a 2 cm cyst in the left kidney.")
    assert s.size_findings == ("nodule", "cyst")
    assert size_rows("train_1_a_1", [s]) == []  # RadGenome keeps no size of a sentence that gives several
    ss = ground_report("A 6 mm nodule in the right lower lobe. A 2 cm cyst in the left kidney.", None)
    rows = size_rows("train_1_a_1", ss)
    assert ("train_1_a_1.nii.gz", LEFT_KIDNEY[0], "cyst", "2 cm") in rows
    assert ("train_1_a_1.nii.gz", RLL[1], "nodule", "6 mm") in rows
    assert not any(r[2] == "cyst" and r[1].startswith("lung") for r in rows)


def test_backend_interface_lives_in_ground():
    import ast
    import inspect

    from radgenome_hf.generate import ground, llm

    assert llm.GroundingBackend is ground.GroundingBackend and llm.LexiconBackend is ground.LexiconBackend
    assert isinstance(ground.LexiconBackend(), ground.GroundingBackend)
    tree = ast.parse(inspect.getsource(ground))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "llm" not in imported and not any(m and m.endswith(".llm") for m in imported)


def test_radgenome_path_conventions():
    # a lingular finding sits under the left lung, its upper lobe only when named
    assert analyze_sentence("Atelectasis in the lingular segment of the left lung.").paths == ("lung/lung/left lung",)
    assert "lung/lung/left lung/left lung upper lobe" in analyze_sentence(
        "Atelectasis in the lingular segment of the left lung upper lobe.").paths
    # the rows never end at the mediastinum: its findings sit at the mediastinal tissue
    assert analyze_sentence("Lymph nodes are observed in the mediastinum.").paths == ("mediastinum/mediastinal tissue",)
    # a sentence that mentions the pleura lists its lung findings under the pleura (learned region priority)
    assert analyze_sentence("A subpleural nodule in the right lung lower lobe.").finding_paths == (
        ("subpleural nodule", ("pleura/pleura",)),)
    # a differential asked in parentheses is no finding of the findings section (the impressions keep it)
    s = analyze_sentence("Mosaic attenuation of the right lung (airway disease? vessel disease?).")
    assert s.findings == ("mosaic attenuation",)
    assert "airway disease" in analyze_sentence("Mosaic attenuation (airway disease?).",
                                                section="impressions").findings
    # plaques "in the aorta and coronary arteries" are aortic rows (learned node priority)
    fp = dict(analyze_sentence("Calcific atheroma plaques in the aorta and coronary arteries.").finding_paths)
    assert not any(p.startswith("heart") for p in fp["calcific atheroma plaques"])


def test_back_reference_takes_an_abnormal_antecedent_only():
    ss = ground_report("A nodule in the right lung lower lobe. A second nodule is seen at this level.", None)
    assert dict(ss[1].finding_paths)["second nodule"] == dict(ss[0].finding_paths)["nodule"]
    ss = ground_report("The heart size is normal. A nodule is seen at this level.", None)
    assert dict(ss[1].finding_paths)["nodule"] == ()


def test_a_later_negation_of_another_finding_does_not_negate():
    s = analyze_sentence("A mass lesion in the left breast, no lymph node of pathological size was seen in the axilla.")
    assert s.findings == ("mass lesion",) and "lymph node" in s.negated


def test_comparisons_are_no_negations():
    # a stable finding ("no significant difference in ...") and a new one ("not observed in the previous
    # examination") are present
    assert analyze_sentence("No significant difference was found in the size of the lung nodules.").findings == (
        "lung nodules",)
    assert analyze_sentence("A nodule in the right lung, which was not seen in the previous examination.").findings == (
        "nodule",)
    assert analyze_sentence("No nodule was seen in the right lung.").findings == ()


def test_abnormal_adjective_beside_findings():
    # an abnormal adjective in a clause that already holds a finding is a finding of its own
    s = analyze_sentence("Ground glass areas and dilated vascular structures are seen in the left lung.")
    assert s.findings == ("ground glass areas", "dilated")
    # not when negated, nor in a normal statement
    s = analyze_sentence("A small nodule in the right lung, no enlarged lymph nodes.")
    assert "enlarged" not in s.findings
    assert "irregular" not in analyze_sentence("The nodule is normal, not irregular.").findings


def test_named_anatomy_below_a_cue_refines_it():
    # a learned cue places the finding's region; anatomy named below the cue's place is kept
    s = analyze_sentence("Osteophytic tapering is observed in the T7 vertebra.")
    paths = dict(s.finding_paths)["osteophytic tapering"]
    assert paths and all("thoracic vertebrae 7" in p for p in paths), paths
    s = analyze_sentence("Osteophytic tapering is observed.")
    assert dict(s.finding_paths)["osteophytic tapering"] == ("bone/bone/vertebrae",)


def test_a_landmark_is_no_place_of_the_finding():
    s = analyze_sentence("In the upper lobe of the right lung, in a focal area adjacent to the mediastinum, there are "
                         "ground glass densities.")
    assert all(p.startswith("lung/") for p in dict(s.finding_paths)["ground glass densities"])
    # the landmark still counts when nothing else is named
    s = analyze_sentence("A lymph node adjacent to the aorta.")
    assert "mediastinum/aorta" in dict(s.finding_paths)["lymph node"]


def test_an_unsided_lobe_takes_the_only_side_named():
    lex = Lexicon.default()
    paths = lex.match("Ground glass areas in the upper lobes of both lungs, more prominently on the right.")
    assert "lung/lung/right lung/right lung upper lobe" in paths
    assert not any("left" in p for p in paths)
    # both sides named: the lobe stays unsided
    assert "lung/lung/lung lower lobe" in lex.match("Nodules in the lower lobes, 5 mm on the right and 3 mm on the left.")


def test_abnormal_words_of_form_are_findings():
    assert analyze_sentence("Fusion was observed in the thoracic vertebrae.").findings == ("fusion",)
    assert analyze_sentence("A hypodense area is seen in the right kidney.").abnormal
    assert not analyze_sentence("No narrowing of the trachea was observed.").abnormal
