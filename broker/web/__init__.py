"""What the HTML pages share: templates, static files, translations."""
