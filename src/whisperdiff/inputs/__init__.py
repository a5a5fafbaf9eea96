"""What a run starts from: model weights (any format, converted to openai-whisper names) and the audio with
Whisper's own frontend, and a generated corpus of clips with their properties."""
