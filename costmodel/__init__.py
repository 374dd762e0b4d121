"""Model specs, layouts, roofline op costs, collectives, memory and serving estimates."""
