"""Finding and understanding products: records for the CLI, the HTML catalog and the exports."""
