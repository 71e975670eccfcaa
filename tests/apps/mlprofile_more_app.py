"""Scores batches with real LightGBM, ONNX Runtime and transformers models; no tracing code.

Run by tests/test_ml_profiles.py as ``opentelemetry-instrument python mlprofile_more_app.py OUT.json DIR``.
Writes what each call was given and returned to OUT.json (inputs with their NaNs, the
category-set sizes, the positive-class scores and predicted labels, the prediction id the
app got back), so the test can check the profiles read back from the store against them.
Every model is built here: the ONNX files in DIR, the transformers model from a config
(no download from the Hugging Face hub).
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from stagetrace.instrumentation.profiling import last_prediction_id

out_path, workdir = sys.argv[1], Path(sys.argv[2])
rng = np.random.default_rng(5)
names = ["amount", "hour", "merchant_risk"]
X = np.column_stack([rng.lognormal(3.5, 1.0, 400), rng.integers(0, 24, 400), rng.beta(2, 8, 400)])
y = (X[:, 2] + rng.normal(0, 0.1, 400) > 0.25).astype(int)
df = pd.DataFrame(X, columns=names)
calls = []


def record(framework, features, inputs, scores, labels=None, kinds=None, distinct=None):
    """One call: ``inputs`` rows x features (numeric, NaN = missing; None for a categorical
    column), ``scores`` the positive-class score per row, ``labels`` the predicted class."""
    calls.append({"framework": framework, "features": features, "kinds": kinds or "n" * len(features),
                  "inputs": [[None if v is None or v != v else float(v) for v in row] for row in inputs],
                  "scores": [float(s) for s in scores], "labels": labels, "distinct": distinct,
                  "prediction_id": last_prediction_id()})


# --- LightGBM -------------------------------------------------------------------------
import lightgbm as lgb  # noqa: E402

# a Booster trained on a numpy array with names given to the Dataset: the names come from the booster
booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7}, lgb.Dataset(X, y, feature_name=names),
                    num_boost_round=5)
xb = X[:40].copy()
xb[[2, 5, 11], 0] = np.nan  # LightGBM takes NaN as missing: the profile must count 3 in `amount`
xb[7, 2] = np.nan
record("lightgbm", names, xb, booster.predict(xb))

# the sklearn wrapper fitted on a DataFrame, called with a bare array (names from the model)
clf = lgb.LGBMClassifier(n_estimators=5, num_leaves=7, verbose=-1).fit(df, y)
xc = X[100:117]
proba = clf.predict_proba(xc)
record("lightgbm", names, xc, proba[:, 1], labels=[str(c) for c in clf.classes_[proba.argmax(axis=1)]])

# --- ONNX Runtime ---------------------------------------------------------------------
import onnxruntime as ort  # noqa: E402
from skl2onnx import to_onnx  # noqa: E402
from skl2onnx.common.data_types import FloatTensorType, StringTensorType  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

Xf = X.astype(np.float32)
lr = LogisticRegression(max_iter=500).fit(Xf, y)
# one matrix input: the feature names come from the config (keyed by the model file name)
(workdir / "fraud.onnx").write_bytes(to_onnx(lr, Xf[:1]).SerializeToString())  # skl2onnx's default: ZipMap output
sess = ort.InferenceSession(str(workdir / "fraud.onnx"), providers=["CPUExecutionProvider"])
xo = Xf[:24].copy()
xo[[1, 4], 1] = np.nan
label, probs = sess.run(None, {sess.get_inputs()[0].name: xo})
record("onnxruntime", names, xo, [p[1] for p in probs], labels=[str(v) for v in label])

# one input per column, one of them strings (a converted DataFrame pipeline): the input names are the features
cat = np.where(X[:, 0] > 40, "FR", np.where(X[:, 1] > 12, "DE", "IT"))
frame = pd.DataFrame({"amount": Xf[:, 0], "hour": Xf[:, 1], "country": cat})
pipe = Pipeline([("prep", ColumnTransformer([("num", StandardScaler(), ["amount", "hour"]),
                                             ("cat", OneHotEncoder(handle_unknown="ignore"), ["country"])])),
                 ("lr", LogisticRegression(max_iter=500))]).fit(frame, (X[:, 0] > 33).astype(int))
onx = to_onnx(pipe, initial_types=[("amount", FloatTensorType([None, 1])), ("hour", FloatTensorType([None, 1])),
                                   ("country", StringTensorType([None, 1]))], options={"zipmap": False})
sess2 = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
part = frame.iloc[:30]
feed = {"amount": part[["amount"]].to_numpy(), "hour": part[["hour"]].to_numpy(), "country": part[["country"]].to_numpy()}
label2, probs2 = sess2.run(None, feed)
record("onnxruntime", ["amount", "hour", "country"], [[a, h, None] for a, h in zip(part["amount"], part["hour"])],
       probs2[:, 1], labels=[str(v) for v in label2], kinds="nnc", distinct=[0, 0, int(part["country"].nunique())])

# --- transformers ---------------------------------------------------------------------
import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast, pipeline  # noqa: E402

torch.manual_seed(4)  # a seed whose random model predicts both classes on these texts
words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "card", "fraud", "refund", "late", "ok"]
tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                               sep_token="[SEP]", mask_token="[MASK]")
cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=64, num_labels=2,
                 id2label={0: "legit", 1: "fraud"}, label2id={"legit": 0, "fraud": 1})
cfg._name_or_path = "tiny-fraud-bert"
model = BertForSequenceClassification(cfg).eval()
with torch.no_grad():  # a larger head, so the random model's scores spread away from 0.5
    model.classifier.weight.mul_(40.0)
clf_text = pipeline("text-classification", model=model, tokenizer=fast, device=-1)
texts = ["good card", "bad fraud fraud refund", "late refund", "ok", "fraud card card card late bad", "good ok good"]
res = clf_text(texts)
pos = [r["score"] if r["label"] == "fraud" else 1.0 - r["score"] for r in res]
record("transformers", ["text.length", "text.words"], [[len(t), len(t.split())] for t in texts], pos,
       labels=[r["label"] for r in res])
one = clf_text("bad card")  # one text: the pipeline returns a one-item list
record("transformers", ["text.length", "text.words"], [[8, 2]],
       [one[0]["score"] if one[0]["label"] == "fraud" else 1.0 - one[0]["score"]], labels=[one[0]["label"]])

with open(out_path, "w") as fh:
    json.dump({"calls": calls}, fh)
