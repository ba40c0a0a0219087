"""The quick-start job: synthetic benchmark -> training -> evaluation -> report."""
