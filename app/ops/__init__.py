"""The operator's ``asklane`` command and the operations it runs; neither process imports it."""
