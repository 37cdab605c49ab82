"""mlfsic.datasets: dataset adapters (COCO format, ...) and the coco-moji generator (docs/architecture.md §6)."""
