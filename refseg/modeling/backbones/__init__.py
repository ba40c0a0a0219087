"""Image backbones: each returns feature maps described by its ``spec`` (`FeatureSpec`)."""
