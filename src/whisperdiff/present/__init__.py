"""What a person sees: the HTML report and its plots, headless Chromium to look at it, and the CLI."""
