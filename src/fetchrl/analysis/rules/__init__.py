"""Each algorithm's diagnose rules, one module per algorithm (registered in ``fetchrl.analysis.diagnose.RULES``)."""
