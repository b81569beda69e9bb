"""fitgap: AI-generated image detection from the fitting gaps of bilinear rescaling."""
__version__ = "0.1.0"
