"""Privacy add-ons that work without Flower: plain tensors and arrays in and out."""
