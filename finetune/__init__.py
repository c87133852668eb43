"""finetune package of ragqa."""
