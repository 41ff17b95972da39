"""Mapping a scan: the stages from tokens to ranked, refined, scored and calibrated orientations,
and the TransformerOrientationMap facade."""
