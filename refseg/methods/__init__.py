"""The methods refseg hosts; each folder holds only what is new in it and its assembly."""
