"""The U-curve of validation loss against λ, per regularizer, on three kinds of data and models (issue 17, items 1
and 4): does CV find an interior optimum that beats λ = 0 on the test split, does 10× and 100× more hurt, and is
the λ that CV chooses (rules min and 1-SE) within one grid step of the λ that is best on the test split?"""
