"""The demo app «Suivi Glycémie»: a diabetes follow-up that reads lab results from the holder."""
