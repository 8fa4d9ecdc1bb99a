"""Training data from what ingest stored: template Q&A, refusals, replay and raw text,
built into versioned datasets (`repotune data build`)."""
