"""Operations: the run store, Prometheus metrics, the web dashboard and the observers that feed them."""
