"""``medhub dashboard``: a read-only web app over a run, batch, release or compare folder."""
