"""Training-free estimators ("zero-cost proxies"): each scores a built network at initialisation on a few batches.

An estimator knows no search space: it takes any `nn.Module` whose forward maps an image batch to logits (or to a
tuple whose first item is the logits, as the DARTS eval network returns) and a list of (images, labels) batches,
and returns a float, higher meaning a better predicted architecture. The registry (:mod:`nas.core.estimators.registry`)
names them; :mod:`nas.core.estimators.ensemble` combines several, online.
"""
