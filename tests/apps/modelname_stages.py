"""A user-code inference stage for tests/apps/modelname_app.py (named by configuration)."""


def score(model, x):
    return model.predict_proba(x)
