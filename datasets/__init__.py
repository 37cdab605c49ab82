"""mlfsic.datasets: dataset adapters (COCO format, ...) and the coco-moji generator (DESIGN 6)."""
