"""What a run did and how it is shown: the report's records (per layer, per block, per stage) and the charts drawn
from them. Imports: `checkpoint` (file names)."""
