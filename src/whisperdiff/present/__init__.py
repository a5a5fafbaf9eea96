"""What a person sees: the CLI, the HTML reports (one comparison, one corpus) and their plots, the notebook
display, and headless Chromium to look at a page."""
