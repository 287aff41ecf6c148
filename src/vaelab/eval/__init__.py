"""Estimators that score trained models. They only call a model's public methods; models never
import from here."""
