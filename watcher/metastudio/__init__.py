"""Client for the MetaStudio voice-training job API: request signing, paging, parsing."""
