"""The fraud model's input columns, in order: a module of its own so the demo runner can
name them for the input profiles without importing scikit-learn."""

FEATURES = (
    "amount", "hour", "merchant_risk", "distance_km", "device_age_days",  # from the transaction
    "user_avg_amount", "user_txn_30d", "account_age_days", "chargebacks_90d",  # from the feature store
)
